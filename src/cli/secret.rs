//! Passwords and passphrases: from the terminal without echo for a person, from standard
//! input or a file for a script (systemd's credentials are files).

use anyhow::Context;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Where one secret comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Asked at the terminal, without echo.
    Terminal,
    /// The first line of standard input.
    Stdin,
    /// The first line of a file.
    File(PathBuf),
}

impl Source {
    /// The source a command's flags name: standard input, else a file, else the terminal.
    pub fn from_flags(stdin: bool, file: Option<PathBuf>) -> Self {
        match (stdin, file) {
            (true, _) => Source::Stdin,
            (false, Some(f)) => Source::File(f),
            (false, None) => Source::Terminal,
        }
    }
}

/// Whether a secret asked at the terminal is asked twice (a new one, mistyped once, would
/// lock its owner out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    Once,
    Twice,
}

/// Reads `what` (e.g. "password") from `source`.
pub fn read(what: &str, source: &Source, ask: Ask) -> anyhow::Result<Zeroizing<String>> {
    let secret = match source {
        Source::Stdin => first_line(std::io::stdin().lock())
            .with_context(|| format!("reading the {what} from standard input"))?,
        Source::File(path) => from_file(path)
            .with_context(|| format!("reading the {what} from {}", path.display()))?,
        Source::Terminal => at_terminal(what, ask)?,
    };
    anyhow::ensure!(!secret.is_empty(), "the {what} is empty");
    Ok(secret)
}

fn at_terminal(what: &str, ask: Ask) -> anyhow::Result<Zeroizing<String>> {
    anyhow::ensure!(
        std::io::stdin().is_terminal() || Path::new("/dev/tty").exists(),
        "no terminal to ask the {what} at; give it on standard input or in a file (see --help)"
    );
    let prompt = |p: String| {
        rpassword::prompt_password(p)
            .map(Zeroizing::new)
            .with_context(|| format!("asking the {what} at the terminal"))
    };
    let first = prompt(format!("{}: ", capitalised(what)))?;
    if ask == Ask::Twice {
        let again = prompt(format!("The {what} again: "))?;
        anyhow::ensure!(
            *first == *again,
            "the two {what}s differ; nothing was changed"
        );
    }
    Ok(first)
}

fn from_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let file = std::fs::File::open(path)?;
    first_line(std::io::BufReader::new(file))
}

fn first_line(mut r: impl BufRead) -> anyhow::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    r.read_line(&mut line)?;
    let len = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(len);
    Ok(line)
}

fn capitalised(what: &str) -> String {
    let mut c = what.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_its_first_line_without_the_line_end() {
        let got = first_line("pass word\r\nsecond line\n".as_bytes()).unwrap();
        assert_eq!(*got, "pass word");
        let got = first_line("no line end".as_bytes()).unwrap();
        assert_eq!(*got, "no line end");
    }

    #[test]
    fn an_empty_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, "\n").unwrap();
        let err = read("passphrase", &Source::File(path), Ask::Once).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn flags_pick_stdin_then_file_then_terminal() {
        let f = PathBuf::from("/run/credentials/p");
        assert_eq!(Source::from_flags(true, Some(f.clone())), Source::Stdin);
        assert_eq!(Source::from_flags(false, Some(f.clone())), Source::File(f));
        assert_eq!(Source::from_flags(false, None), Source::Terminal);
    }
}
