//! Cutting a future short with an answer: before a caller gives up on a
//! future (its deadline passed, or a 9P Tflush or Tclunk cancels its
//! request), it polls it one last time inside [`resolve_now`], and every
//! wait inside that honours this (the broker's pushes and pulls) decides at
//! once instead of returning `Pending`: what it did, or that it withdrew.
//! So the caller can tell its client the truth about an operation that may
//! already have taken effect; a future simply dropped learns nothing.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Why a future is being cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Its deadline passed.
    Deadline,
    /// Its caller is giving up on it (a flush, a clunk).
    Cancel,
}

thread_local! {
    /// Set while a future is polled one last time by `resolve_now`.
    static CUTTING: Cell<Option<Cut>> = const { Cell::new(None) };
}

/// Restores the previous state when `resolve_now` ends, even by a panic.
struct Restore(Option<Cut>);

impl Drop for Restore {
    fn drop(&mut self) {
        CUTTING.set(self.0);
    }
}

/// Run `f` (which polls a future one last time before it is dropped) so
/// that every wait inside it that honours cuts decides now.
pub fn resolve_now<R>(cut: Cut, f: impl FnOnce() -> R) -> R {
    let _restore = Restore(CUTTING.replace(Some(cut)));
    f()
}

/// Poll `fut` one last time, cut short by `cut`: its output if it decided.
pub fn last_poll<F: Future + ?Sized>(cut: Cut, fut: Pin<&mut F>) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match resolve_now(cut, || fut.poll(&mut cx)) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// Whether the future being polled must decide now (inside `resolve_now`).
pub fn cutting() -> Option<Cut> {
    CUTTING.get()
}
