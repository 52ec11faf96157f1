//! Errors as text, for the places where a chain of typed errors ends up in front of a person
//! (the CLI's `error:` line) or must be carried as one message.

use std::error::Error;

/// `outer: cause: root cause` from `err` and its `source()` chain, leaving out a cause whose
/// text the message so far already includes (reqwest and io wrappers often repeat theirs;
/// `connection refused` sits three levels under reqwest's own message).
pub fn render_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("pulling `busybox`")]
        Pull(#[source] Middle),
        #[error("reading `{0}`: no such file")]
        Repeats(String, #[source] std::io::Error),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("sending request")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn joins_every_cause_once() {
        let e = Outer::Pull(Middle(std::io::Error::other("connection refused")));
        assert_eq!(
            render_chain(&e),
            "pulling `busybox`: sending request: connection refused"
        );
        let e = Outer::Repeats("x".into(), std::io::Error::other("no such file"));
        assert_eq!(render_chain(&e), "reading `x`: no such file");
        assert_eq!(render_chain(&std::io::Error::other("plain")), "plain");
    }

    #[test]
    fn renders_anyhow_context_chains() {
        let e = anyhow::Error::new(std::io::Error::other("disk full")).context("writing `out.tar`");
        assert_eq!(render_chain(e.as_ref()), "writing `out.tar`: disk full");
    }
}
