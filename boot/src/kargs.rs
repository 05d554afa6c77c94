//! Appending kernel arguments to bootloader configuration files (GRUB, ISOLINUX/SYSLINUX).

/// The syntax of a bootloader configuration file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigKind {
    /// GRUB 2 `grub.cfg`: kernel lines start with `linux`, `linuxefi` or `linux16`.
    Grub,
    /// ISOLINUX/SYSLINUX `*.cfg`: kernel arguments are on `append` lines (any case).
    Isolinux,
}

/// The result of patching one configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchedConfig {
    pub data: Vec<u8>,
    /// Kernel lines found.
    pub kernel_lines: usize,
    /// Kernel lines that got at least one argument.
    pub changed_lines: usize,
}

const GRUB_KERNEL_CMDS: [&[u8]; 3] = [b"linux", b"linuxefi", b"linux16"];

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn first_word(line: &[u8]) -> &[u8] {
    let s = line.iter().position(|b| !is_ws(*b)).unwrap_or(line.len());
    let rest = &line[s..];
    let e = rest
        .iter()
        .position(|b| is_ws(*b) || *b == b'\r')
        .unwrap_or(rest.len());
    &rest[..e]
}

/// Splits GRUB words the way the shell-like GRUB lexer does for plain quoting, returning the
/// unquoted words and the byte index where an unquoted comment begins (if any).
fn grub_words(line: &[u8]) -> (Vec<Vec<u8>>, Option<usize>) {
    let mut words = Vec::new();
    let mut cur: Option<Vec<u8>> = None;
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < line.len() {
        let b = line[i];
        match quote {
            Some(q) => {
                if b == q {
                    quote = None;
                } else if q == b'"' && b == b'\\' && i + 1 < line.len() {
                    i += 1;
                    cur.get_or_insert_with(Vec::new).push(line[i]);
                } else {
                    cur.get_or_insert_with(Vec::new).push(b);
                }
            }
            None => {
                if is_ws(b) || b == b'\r' {
                    if let Some(w) = cur.take() {
                        words.push(w);
                    }
                } else if b == b'#' && cur.is_none() {
                    return (words, Some(i));
                } else if b == b'\'' || b == b'"' {
                    quote = Some(b);
                    cur.get_or_insert_with(Vec::new);
                } else if b == b'\\' && i + 1 < line.len() {
                    i += 1;
                    cur.get_or_insert_with(Vec::new).push(line[i]);
                } else {
                    cur.get_or_insert_with(Vec::new).push(b);
                }
            }
        }
        i += 1;
    }
    if let Some(w) = cur.take() {
        words.push(w);
    }
    (words, None)
}

/// Quotes an argument for a GRUB command line when it holds characters GRUB would interpret.
pub fn grub_quote(arg: &str) -> String {
    let plain = arg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.,:/=+@%?~^!".contains(&b));
    if plain && !arg.is_empty() {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// Appends `args` to every kernel line of a bootloader config. Arguments already present on a
/// line (as an exact word) are not added again, so patching is idempotent.
pub fn append_kernel_args(kind: ConfigKind, text: &[u8], args: &[String]) -> PatchedConfig {
    let mut out = Vec::with_capacity(text.len() + 256);
    let mut kernel_lines = 0;
    let mut changed_lines = 0;
    let lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let w = first_word(line);
        let is_kernel = match kind {
            ConfigKind::Grub => GRUB_KERNEL_CMDS.contains(&w),
            ConfigKind::Isolinux => w.eq_ignore_ascii_case(b"append"),
        };
        if !is_kernel {
            out.extend_from_slice(line);
            i += 1;
            continue;
        }
        // join GRUB continuation lines (`\` at the end) into one logical line
        let mut logical: Vec<&[u8]> = vec![line];
        if kind == ConfigKind::Grub {
            while strip_eol(logical.last().unwrap()).ends_with(b"\\")
                && i + logical.len() < lines.len()
            {
                logical.push(lines[i + logical.len()]);
            }
        }
        i += logical.len();
        kernel_lines += 1;
        for l in &logical[..logical.len() - 1] {
            out.extend_from_slice(l);
        }
        let last = logical[logical.len() - 1];
        let joined: Vec<u8> = logical
            .iter()
            .flat_map(|l| strip_eol(l).iter().copied())
            .collect();
        let (present, comment_at) = match kind {
            ConfigKind::Grub => grub_words(&joined),
            ConfigKind::Isolinux => (
                joined
                    .split(|b| is_ws(*b))
                    .filter(|w| !w.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect(),
                None,
            ),
        };
        let missing: Vec<&String> = args
            .iter()
            .filter(|a| !present.iter().any(|p| p == a.as_bytes()))
            .collect();
        if missing.is_empty() {
            out.extend_from_slice(last);
            continue;
        }
        changed_lines += 1;
        let body = strip_eol(last);
        let eol = &last[body.len()..];
        // where, within `last`, the comment begins (if the comment is on this physical line)
        let prefix_len = joined.len() - body.len();
        let split = match comment_at {
            Some(c) if c >= prefix_len => c - prefix_len,
            _ => body.len(),
        };
        let mut head = body[..split].to_vec();
        while head.last().is_some_and(|b| is_ws(*b)) {
            head.pop();
        }
        out.extend_from_slice(&head);
        for a in missing {
            out.push(b' ');
            match kind {
                ConfigKind::Grub => out.extend_from_slice(grub_quote(a).as_bytes()),
                ConfigKind::Isolinux => out.extend_from_slice(a.as_bytes()),
            }
        }
        if split < body.len() {
            out.push(b' ');
            out.extend_from_slice(&body[split..]);
        }
        out.extend_from_slice(eol);
    }
    PatchedConfig {
        data: out,
        kernel_lines,
        changed_lines,
    }
}

fn strip_eol(l: &[u8]) -> &[u8] {
    let mut e = l.len();
    if e > 0 && l[e - 1] == b'\n' {
        e -= 1;
    }
    if e > 0 && l[e - 1] == b'\r' {
        e -= 1;
    }
    &l[..e]
}

/// Splits a kernel command line given by an operator into words (whitespace separated,
/// double or single quotes group words).
pub fn split_kernel_args(s: &str) -> Vec<String> {
    grub_words(s.as_bytes())
        .0
        .into_iter()
        .map(|w| String::from_utf8_lossy(&w).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn grub_lines_get_args_once() {
        let cfg = b"set timeout=1\nmenuentry 'x' {\n  linux /vmlinuz quiet # comment\n  initrd /initrd\n}\nmenuentry y {\n\tlinuxefi /k\r\n\tlinux16 /k a\n}\n";
        let a = args(&["talos.config=metal-iso", "x=a b"]);
        let p = append_kernel_args(ConfigKind::Grub, cfg, &a);
        let s = String::from_utf8(p.data.clone()).unwrap();
        assert_eq!(p.kernel_lines, 3);
        assert_eq!(p.changed_lines, 3);
        assert!(
            s.contains("  linux /vmlinuz quiet talos.config=metal-iso 'x=a b' # comment\n"),
            "{s}"
        );
        assert!(
            s.contains("\tlinuxefi /k talos.config=metal-iso 'x=a b'\r\n"),
            "{s}"
        );
        assert!(
            s.contains("\tlinux16 /k a talos.config=metal-iso 'x=a b'\n"),
            "{s}"
        );
        assert!(s.contains("  initrd /initrd\n"));
        let again = append_kernel_args(ConfigKind::Grub, &p.data, &a);
        assert_eq!(again.data, p.data);
        assert_eq!(again.changed_lines, 0);
    }

    #[test]
    fn grub_continuation_lines() {
        let cfg = b"linux /k a \\\n  b\ninitrd /i\n";
        let p = append_kernel_args(ConfigKind::Grub, cfg, &args(&["c=1"]));
        assert_eq!(
            String::from_utf8(p.data).unwrap(),
            "linux /k a \\\n  b c=1\ninitrd /i\n"
        );
    }

    #[test]
    fn isolinux_append_lines() {
        let cfg = b"DEFAULT x\nLABEL x\n  KERNEL /k\n  APPEND initrd=/i quiet\nlabel y\n  kernel /k\n  append initrd=/i\n# append commented\n";
        let p = append_kernel_args(ConfigKind::Isolinux, cfg, &args(&["a=1", "quiet"]));
        let s = String::from_utf8(p.data).unwrap();
        assert_eq!(p.kernel_lines, 2);
        assert!(s.contains("  APPEND initrd=/i quiet a=1\n"), "{s}");
        assert!(s.contains("  append initrd=/i a=1 quiet\n"), "{s}");
        assert!(s.contains("# append commented\n"));
    }

    #[test]
    fn non_kernel_words_untouched() {
        let cfg = b"linuxfoo x\nset linux=1\n";
        let p = append_kernel_args(ConfigKind::Grub, cfg, &args(&["a"]));
        assert_eq!(p.kernel_lines, 0);
        assert_eq!(p.data, cfg);
    }

    #[test]
    fn quoting() {
        assert_eq!(
            grub_quote("config_url=https://h:1/a/b?x=1"),
            "config_url=https://h:1/a/b?x=1"
        );
        assert_eq!(grub_quote("u=https://h/a&b=$x"), "'u=https://h/a&b=$x'");
        assert_eq!(
            split_kernel_args("a=1  'b c' \"d\""),
            vec!["a=1", "b c", "d"]
        );
    }
}
