//! Cutting a future short with an answer: before a caller gives up on a
//! future (its deadline passed, or a 9P Tflush or Tclunk cancels its
//! request), it polls it one last time inside [`resolve_now`], and every
//! wait inside that honours this (the broker's pushes and pulls) decides at
//! once instead of returning `Pending`: what it did, or that it withdrew.
//! So the caller can tell its client the truth about an operation that may
//! already have taken effect; a future simply dropped learns nothing.
//!
//! A caller that can wait for the answer (a 9P Tflush, whose Rflush may
//! follow the old request's reply) cuts with [`poll_patiently`]. A future
//! whose outcome is on its way and cannot be known at once (a publish
//! sent to another server and not yet acknowledged) then calls [`defer`]
//! and returns `Pending`, and is polled again, still cut, when it wakes:
//! the caller learns what happened instead of a guess.

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
    /// Set while the cut's caller can wait for the outcome.
    static PATIENT: Cell<bool> = const { Cell::new(false) };
    /// Set by a future that will decide once it wakes (`defer`).
    static DEFERRED: Cell<bool> = const { Cell::new(false) };
}

/// Restores the previous state when a cut poll ends, even by a panic.
struct Restore(Option<Cut>, bool);

impl Drop for Restore {
    fn drop(&mut self) {
        CUTTING.set(self.0);
        PATIENT.set(self.1);
    }
}

fn enter(cut: Cut, patient: bool) -> Restore {
    Restore(CUTTING.replace(Some(cut)), PATIENT.replace(patient))
}

/// Run `f` (which polls a future one last time before it is dropped) so
/// that every wait inside it that honours cuts decides now.
pub fn resolve_now<R>(cut: Cut, f: impl FnOnce() -> R) -> R {
    let _restore = enter(cut, false);
    f()
}

/// What a future cut short by a patient caller did on one poll.
#[derive(Debug)]
pub enum Patient<T> {
    /// It decided: its output.
    Done(T),
    /// Its outcome is on the way (it called [`defer`]): poll it again,
    /// still cut, when it wakes.
    Deciding,
    /// Nothing happened: drop it.
    Nothing,
}

/// Poll `fut`, cut short by `cut`, for a caller that can wait for an
/// outcome on its way (see the module comment).
pub fn poll_patiently<F: Future + ?Sized>(
    cut: Cut,
    fut: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Patient<F::Output> {
    let _restore = enter(cut, true);
    DEFERRED.set(false);
    match fut.poll(cx) {
        Poll::Ready(out) => Patient::Done(out),
        Poll::Pending if DEFERRED.take() => Patient::Deciding,
        Poll::Pending => Patient::Nothing,
    }
}

/// Whether the caller cutting the future now short can wait for an
/// outcome on its way.
pub fn patient() -> bool {
    CUTTING.get().is_some() && PATIENT.get()
}

/// Called by a future cut short by a patient caller whose outcome is on
/// its way: it returns `Pending`, and wakes its waker once it knows.
pub fn defer() {
    DEFERRED.set(true);
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
