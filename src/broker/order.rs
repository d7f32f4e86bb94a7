//! Tree order: the order every listing of topic names comes in.
//!
//! Names compare component by component, each component in byte order, a
//! name before the names under it (`a`, `a/b`, `a-x`, `a.y`): `/` sorts
//! before every character a name may hold. So the topics under a
//! directory are one contiguous range, and a directory's children come in
//! their own byte order whatever of them is a topic (plain byte order puts
//! `a-x` between `a` and `a/b`, so a child would move when `a` is created).
//! An engine keeps its ordered index keyed by [`key`] (`/` mapped to
//! U+0001, below every name character), which byte order then sorts in
//! tree order.

use std::borrow::Cow;
use std::cmp::Ordering;

/// The index key of `name`: byte order of keys is tree order of names.
pub fn key(name: &str) -> Cow<'_, str> {
    if name.contains('/') {
        Cow::Owned(name.replace('/', "\u{1}"))
    } else {
        Cow::Borrowed(name)
    }
}

/// The name an index key stands for.
pub fn name(key: &str) -> String {
    key.replace('\u{1}', "/")
}

/// Compare two names in tree order.
pub fn cmp(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// A name-form bound past every name under `dir` (`dir/…`) and before the
/// next name that is not under it.
pub fn past_subtree(dir: &str) -> String {
    format!("{dir}/{}", char::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_tree_order() {
        let mut names = vec!["a-x", "a/b", "a", "a.y", "a/b/c", "a/-", "b", "a0"];
        let mut by_key = names.clone();
        by_key.sort_by(|a, b| key(a).cmp(&key(b)));
        names.sort_by(|a, b| cmp(a, b));
        assert_eq!(names, ["a", "a/-", "a/b", "a/b/c", "a-x", "a.y", "a0", "b"]);
        assert_eq!(by_key, names);
        assert!(key(&past_subtree("a")) > key("a/zzz/z"));
        assert!(key(&past_subtree("a")) < key("a-"));
        assert_eq!(name(&key("a/b/c")), "a/b/c");
    }
}
