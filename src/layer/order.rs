//! Walking a tree in the byte order of whole paths (`a`, `a.txt`, `a/b`), the order layer
//! tars and content digests sort their entries in, without listing the whole tree first:
//! each directory's names are sorted on their own, a directory's contents placed as if its
//! name ended in `/`. Memory is one directory's names per level being walked (issue 23).

/// The names of one directory, in the order to visit them: each name's own entry, and for
/// a directory, a second visit where its contents go.
#[derive(Default)]
pub(crate) struct SortedNames {
    names: Vec<u8>,
    /// Sorted backwards: the next is last.
    todo: Vec<Visit>,
}

/// One visit: a name (in [`SortedNames`]'s buffer), whether it is the visit of its
/// contents, and the caller's tag for it.
#[derive(Clone, Copy)]
pub(crate) struct Visit {
    start: u32,
    len: u32,
    pub contents: bool,
    pub tag: u8,
}

impl SortedNames {
    /// Add a name; a directory's is visited twice (itself, then its contents).
    pub fn add(&mut self, name: &[u8], is_dir: bool, tag: u8) {
        let start = self.names.len() as u32;
        self.names.extend_from_slice(name);
        let len = name.len() as u32;
        self.todo.push(Visit {
            start,
            len,
            contents: false,
            tag,
        });
        if is_dir {
            self.todo.push(Visit {
                start,
                len,
                contents: true,
                tag,
            });
        }
    }

    /// Put the visits in order; call once, after the last [`SortedNames::add`].
    pub fn sort(&mut self) {
        let names = &self.names;
        let key = |v: &Visit| {
            let name = &names[v.start as usize..(v.start + v.len) as usize];
            let slash: &[u8] = if v.contents { b"/" } else { b"" };
            name.iter().chain(slash)
        };
        self.todo.sort_unstable_by(|a, b| key(b).cmp(key(a)));
    }

    pub fn next(&mut self) -> Option<Visit> {
        self.todo.pop()
    }

    /// The visits still to come, in order, without taking them.
    pub fn upcoming(&self) -> impl Iterator<Item = &Visit> {
        self.todo.iter().rev()
    }

    pub fn name(&self, v: &Visit) -> &[u8] {
        &self.names[v.start as usize..(v.start + v.len) as usize]
    }

    /// Drop the visit of `v`'s contents (when there is nothing in it to visit).
    pub fn skip_contents(&mut self, v: &Visit) {
        self.todo.retain(|t| !(t.contents && t.start == v.start));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_sort_where_their_paths_do() {
        let mut s = SortedNames::default();
        for (name, dir) in [("a", true), ("a.txt", false), ("a-z", true), ("ab", false)] {
            s.add(name.as_bytes(), dir, 0);
        }
        s.sort();
        let mut got = Vec::new();
        while let Some(v) = s.next() {
            let name = String::from_utf8(s.name(&v).to_vec()).unwrap();
            got.push(if v.contents { format!("{name}/") } else { name });
        }
        assert_eq!(got, ["a", "a-z", "a-z/", "a.txt", "a/", "ab"]);
    }
}
