//! Kernel arguments in bootloader configuration files: reading what a config refers to, and
//! appending arguments to every line that starts a Linux kernel (GRUB 2, ISOLINUX/SYSLINUX).
//!
//! Facts this relies on (upstream sources in boot/UPSTREAM.md):
//! - GRUB expands variables in the command word, so `$linux ($root)/boot/kernel ...` runs `linux`
//!   or `linuxefi` (Kairos before 2023-08, kiwi before 10.0.1: `set linux=linux`, switched to
//!   `linuxefi` under EFI). `linux`, `linuxefi` and `linux16` take the kernel command line.
//! - `source`/`.` and `configfile` (and `extract_entries_*`) read further files; `set prefix=...`
//!   is what `$prefix` means in them.
//! - ISOLINUX: `INCLUDE`, `MENU INCLUDE` and `CONFIG` read further files; an `APPEND` before any
//!   `LABEL` is the default for labels without their own; a second `APPEND` in a label replaces
//!   the first; `APPEND -` means no arguments; `DEFAULT`/`ONTIMEOUT` may carry a whole command line.
//! - Linux passes everything after a standalone `--` to init, so arguments go before it.

use std::collections::{BTreeMap, BTreeSet};

/// The syntax of a bootloader configuration file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigKind {
    /// GRUB 2 `grub.cfg`: kernel lines start with `linux`, `linuxefi`, `linux16` or a variable
    /// holding one of them.
    Grub,
    /// ISOLINUX/SYSLINUX `*.cfg`: kernel arguments are on `APPEND` lines (any case).
    Isolinux,
}

/// The result of patching one configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchedConfig {
    pub data: Vec<u8>,
    /// Kernel lines found (GRUB), or labels and inline command lines that boot Linux (ISOLINUX).
    pub kernel_lines: usize,
    /// Of those, the ones that got at least one argument.
    pub changed_lines: usize,
}

/// A file another config reads, as written there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigReference {
    /// The path with the variables the file itself sets substituted (`$prefix`), device prefix
    /// (`($root)`) removed. May still hold `$` when it uses a variable the file does not set.
    pub path: String,
    /// ISOLINUX `CONFIG file [dir]`: the referenced file runs with `dir` (or the file's own
    /// directory) as working directory.
    pub new_directory: Option<String>,
}

/// What one config file says about others, and the context patching needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigScan {
    pub references: Vec<ConfigReference>,
    /// GRUB: variables assigned a kernel command (`set linux=linuxefi`).
    pub kernel_vars: BTreeSet<String>,
    /// ISOLINUX: an `APPEND` outside any `LABEL`.
    pub global_append: bool,
}

/// What patching one file needs to know about the rest of the configs it belongs with.
#[derive(Clone, Debug, Default)]
pub struct RewriteContext {
    /// GRUB variables that hold a kernel command, from every file of the boot path.
    pub grub_kernel_vars: BTreeSet<String>,
    /// ISOLINUX: some file of the boot path has a global `APPEND` (labels without their own
    /// then get the arguments through it).
    pub isolinux_global_append: bool,
}

const GRUB_KERNEL_CMDS: [&str; 3] = ["linux", "linuxefi", "linux16"];
const GRUB_INCLUDE_CMDS: [&str; 5] = [
    "source",
    ".",
    "configfile",
    "extract_entries_source",
    "extract_entries_configfile",
];
/// ISOLINUX kernel images that are not Linux (COM32 modules, boot sectors, PXE images).
const ISOLINUX_NON_LINUX_EXT: [&str; 7] = [".c32", ".com", ".cbt", ".bs", ".bss", ".0", ".bin"];

/// A word of a config line: its unquoted bytes and its byte range in the line.
type Word = (Vec<u8>, usize, usize);

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Splits GRUB words the way the shell-like GRUB lexer does for plain quoting, returning the
/// unquoted words with their byte ranges, and the byte index where an unquoted comment begins.
fn grub_words(line: &[u8]) -> (Vec<Word>, Option<usize>) {
    let mut words = Vec::new();
    let mut cur: Option<(Vec<u8>, usize)> = None;
    let mut i = 0;
    let mut quote: Option<u8> = None;
    let push = |cur: &mut Option<(Vec<u8>, usize)>, at: usize, b: u8| {
        cur.get_or_insert_with(|| (Vec::new(), at)).0.push(b);
    };
    while i < line.len() {
        let b = line[i];
        match quote {
            Some(q) => {
                if b == q {
                    quote = None;
                } else if q == b'"' && b == b'\\' && i + 1 < line.len() {
                    i += 1;
                    push(&mut cur, i, line[i]);
                } else {
                    push(&mut cur, i, b);
                }
            }
            None => {
                if is_ws(b) || b == b'\r' || b == b'\n' {
                    if let Some((w, s)) = cur.take() {
                        words.push((w, s, i));
                    }
                } else if b == b'#' && cur.is_none() {
                    return (words, Some(i));
                } else if b == b'\'' || b == b'"' {
                    quote = Some(b);
                    cur.get_or_insert_with(|| (Vec::new(), i));
                } else if b == b'\\' && i + 1 < line.len() {
                    i += 1;
                    push(&mut cur, i - 1, line[i]);
                } else {
                    push(&mut cur, i, b);
                }
            }
        }
        i += 1;
    }
    if let Some((w, s)) = cur.take() {
        words.push((w, s, line.len()));
    }
    (words, None)
}

/// Whitespace-separated words of an ISOLINUX line with their byte ranges.
fn plain_words(line: &[u8]) -> Vec<Word> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &b) in line.iter().enumerate() {
        let sep = is_ws(b) || b == b'\r' || b == b'\n';
        match (sep, start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                out.push((line[s..i].to_vec(), s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((line[s..].to_vec(), s, line.len()));
    }
    out
}

fn text(w: &[u8]) -> String {
    String::from_utf8_lossy(w).into_owned()
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

/// The physical lines of a file, with GRUB's `\` continuations joined into logical lines
/// (each logical line is the list of physical lines it spans).
fn logical_lines(text: &[u8], continuations: bool) -> Vec<Vec<&[u8]>> {
    let lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let mut group = vec![lines[i]];
        i += 1;
        while continuations && strip_eol(group.last().unwrap()).ends_with(b"\\") && i < lines.len()
        {
            group.push(lines[i]);
            i += 1;
        }
        out.push(group);
    }
    out
}

fn joined(group: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, l) in group.iter().enumerate() {
        let body = strip_eol(l);
        if k + 1 < group.len() {
            // `\` + newline joins the lines.
            v.extend_from_slice(body.strip_suffix(b"\\").unwrap_or(body));
        } else {
            v.extend_from_slice(body);
        }
    }
    v
}

/// Splits a line's words into statements at `;` and drops the keywords that open a block
/// (`if [ -f x ]; then source y; fi` gives `if [ -f x ]`, `source y`, ``).
fn grub_statements(words: Vec<Word>) -> Vec<Vec<Word>> {
    let mut out = vec![Vec::new()];
    for (mut w, s, e) in words {
        let ends = w.ends_with(b";");
        if ends {
            w.pop();
        }
        let cur = out.last_mut().unwrap();
        let keyword = matches!(w.as_slice(), b"then" | b"else" | b"do" | b"{" | b"}");
        if !(w.is_empty() || keyword && cur.is_empty()) {
            cur.push((w, s, e));
        }
        if ends {
            out.push(Vec::new());
        }
    }
    out
}

/// A GRUB assignment `set NAME=VALUE` or `NAME=VALUE` as (name, unquoted value).
fn grub_assignment(words: &[Word]) -> Option<(String, String)> {
    let w = match words {
        [(set, ..), (w, ..), ..] if set == b"set" => w,
        [(w, ..)] if !w.starts_with(b"$") => w,
        _ => return None,
    };
    let s = text(w);
    let (name, value) = s.split_once('=')?;
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    ok.then(|| (name.to_string(), value.to_string()))
}

/// `$name` or `${name}` as the name.
fn grub_var_ref(w: &[u8]) -> Option<String> {
    let s = text(w);
    let inner = s.strip_prefix('$')?;
    let inner = inner
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(inner);
    (!inner.is_empty()
        && inner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    .then(|| inner.to_string())
}

/// Substitutes `$name`/`${name}` for the variables in `vars`; strips a leading `(device)`.
fn grub_resolve_path(raw: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(b) = after.strip_prefix('{') {
            match b.find('}') {
                Some(e) => (&b[..e], e + 2),
                None => (b, b.len() + 1),
            }
        } else {
            let e = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..e], e)
        };
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => {
                out.push('$');
                out.push_str(&after[..len]);
            }
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    strip_device(&out)
}

/// `(hd0,1)/boot/x` -> `/boot/x`; `($root)/x` -> `/x`.
fn strip_device(p: &str) -> String {
    let p = p.trim();
    if let Some(rest) = p.strip_prefix('(')
        && let Some(e) = rest.find(')')
    {
        return rest[e + 1..].to_string();
    }
    p.to_string()
}

/// Reads what a config file refers to and the context its lines set.
pub fn scan_config(kind: ConfigKind, data: &[u8]) -> ConfigScan {
    match kind {
        ConfigKind::Grub => scan_grub(data),
        ConfigKind::Isolinux => scan_isolinux(data),
    }
}

fn scan_grub(data: &[u8]) -> ConfigScan {
    let mut scan = ConfigScan::default();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut raw_refs = Vec::new();
    for group in logical_lines(data, true) {
        let line = joined(&group);
        let (words, _) = grub_words(&line);
        for statement in grub_statements(words) {
            if let Some((name, value)) = grub_assignment(&statement) {
                if GRUB_KERNEL_CMDS.contains(&value.as_str()) {
                    scan.kernel_vars.insert(name.clone());
                }
                vars.insert(name, value);
                continue;
            }
            if let [(cmd, ..), (arg, ..), ..] = statement.as_slice()
                && GRUB_INCLUDE_CMDS.contains(&text(cmd).as_str())
            {
                raw_refs.push(text(arg));
            }
        }
    }
    scan.references = raw_refs
        .into_iter()
        .map(|r| ConfigReference {
            path: grub_resolve_path(&r, &vars),
            new_directory: None,
        })
        .collect();
    scan
}

fn isolinux_keyword(words: &[Word]) -> Option<(String, usize)> {
    let first = text(&words.first()?.0).to_ascii_lowercase();
    if first == "menu" {
        let second = text(&words.get(1)?.0).to_ascii_lowercase();
        return Some((format!("menu {second}"), 2));
    }
    Some((first, 1))
}

fn scan_isolinux(data: &[u8]) -> ConfigScan {
    let mut scan = ConfigScan::default();
    let mut in_label = false;
    for line in data.split_inclusive(|b| *b == b'\n') {
        let words = plain_words(strip_eol(line));
        let Some((kw, n)) = isolinux_keyword(&words) else {
            continue;
        };
        if kw.starts_with('#') {
            continue;
        }
        let arg = words.get(n).map(|w| text(&w.0));
        match kw.as_str() {
            "label" => in_label = true,
            "append" if !in_label => scan.global_append = true,
            "include" | "menu include" => {
                if let Some(a) = arg {
                    scan.references.push(ConfigReference {
                        path: a,
                        new_directory: None,
                    });
                }
            }
            "config" => {
                if let Some(a) = arg {
                    scan.references.push(ConfigReference {
                        new_directory: Some(
                            words
                                .get(n + 1)
                                .map(|w| text(&w.0))
                                .unwrap_or_else(|| parent_dir(&a)),
                        ),
                        path: a,
                    });
                }
            }
            _ => {}
        }
    }
    scan
}

/// The directory part of a path (`/a/b.cfg` -> `/a`, `b.cfg` -> ``).
pub(crate) fn parent_dir(p: &str) -> String {
    match p.rfind(['/', '\\']) {
        Some(0) => "/".into(),
        Some(i) => p[..i].to_string(),
        None => String::new(),
    }
}

/// Appends `args` to every kernel line of a bootloader config, with the context taken from the
/// file alone (see [`append_kernel_args_with`]).
pub fn append_kernel_args(kind: ConfigKind, text: &[u8], args: &[String]) -> PatchedConfig {
    let scan = scan_config(kind, text);
    let ctx = RewriteContext {
        grub_kernel_vars: scan.kernel_vars,
        isolinux_global_append: scan.global_append,
    };
    append_kernel_args_with(kind, text, args, &ctx)
}

/// Appends `args` to every kernel line of a bootloader config. Arguments already present on a
/// line (as an exact word) are not added again, so patching is idempotent. Line endings (LF or
/// CRLF) are kept as they are.
pub fn append_kernel_args_with(
    kind: ConfigKind,
    text: &[u8],
    args: &[String],
    ctx: &RewriteContext,
) -> PatchedConfig {
    match kind {
        ConfigKind::Grub => rewrite_grub(text, args, ctx),
        ConfigKind::Isolinux => rewrite_isolinux(text, args, ctx),
    }
}

/// Rewrites one logical line (a group of physical lines) with the arguments added before a
/// standalone `--` or after the last word (so before a trailing comment). Returns None when
/// nothing is missing.
fn add_to_line(
    group: &[&[u8]],
    words: &[Word],
    args: &[String],
    quote: fn(&str) -> String,
) -> Option<Vec<u8>> {
    let missing: Vec<&String> = args
        .iter()
        .filter(|a| !words.iter().any(|(w, ..)| w == a.as_bytes()))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let insertion: String = missing.iter().map(|a| format!(" {}", quote(a))).collect();
    // Position in the joined line: before `--`, else after the last word.
    let dashdash = words.iter().skip(1).find(|(w, ..)| w == b"--");
    let (joined_pos, before_token) = match dashdash {
        Some((_, s, _)) => (*s, true),
        None => (words.last().map(|(_, _, e)| *e).unwrap_or(0), false),
    };
    // Map the joined position back to a physical line (continuations drop `\`+EOL).
    let mut out = Vec::new();
    let mut offset = 0;
    let mut placed = false;
    for (k, l) in group.iter().enumerate() {
        let body = strip_eol(l);
        let eol = &l[body.len()..];
        let content = if k + 1 < group.len() {
            body.strip_suffix(b"\\").unwrap_or(body)
        } else {
            body
        };
        let tail = &body[content.len()..];
        let end = offset + content.len();
        if !placed && joined_pos <= end {
            let at = joined_pos - offset;
            let (a, b) = content.split_at(at);
            if before_token {
                out.extend_from_slice(a);
                out.extend_from_slice(insertion.trim_start().as_bytes());
                out.push(b' ');
                out.extend_from_slice(b);
            } else {
                out.extend_from_slice(a);
                out.extend_from_slice(insertion.as_bytes());
                out.extend_from_slice(b);
            }
            placed = true;
        } else {
            out.extend_from_slice(content);
        }
        out.extend_from_slice(tail);
        out.extend_from_slice(eol);
        offset = end;
    }
    Some(out)
}

fn rewrite_grub(data: &[u8], args: &[String], ctx: &RewriteContext) -> PatchedConfig {
    let mut out = Vec::with_capacity(data.len() + 256);
    let (mut kernel_lines, mut changed_lines) = (0, 0);
    for group in logical_lines(data, true) {
        let line = joined(&group);
        let (words, _) = grub_words(&line);
        let is_kernel = words.first().is_some_and(|(w, ..)| {
            GRUB_KERNEL_CMDS.contains(&text(w).as_str())
                || grub_var_ref(w).is_some_and(|v| ctx.grub_kernel_vars.contains(&v))
        });
        if !is_kernel {
            for l in &group {
                out.extend_from_slice(l);
            }
            continue;
        }
        kernel_lines += 1;
        match add_to_line(&group, &words, args, grub_quote) {
            Some(new) => {
                changed_lines += 1;
                out.extend_from_slice(&new);
            }
            None => {
                for l in &group {
                    out.extend_from_slice(l);
                }
            }
        }
    }
    PatchedConfig {
        data: out,
        kernel_lines,
        changed_lines,
    }
}

/// One `LABEL` section of an ISOLINUX file while it is read.
struct Label {
    /// Index in `out_lines` of the KERNEL/LINUX line, and that line's indentation and EOL.
    kernel_line: Option<(usize, Vec<u8>, Vec<u8>)>,
    boots_linux: bool,
    has_append: bool,
    /// The label's APPEND lines got (or already had) the arguments.
    appended: bool,
    changed: bool,
}

fn is_linux_image(keyword: &str, image: &str) -> bool {
    match keyword {
        "linux" => true,
        "kernel" => {
            let lower = image.to_ascii_lowercase();
            !ISOLINUX_NON_LINUX_EXT.iter().any(|e| lower.ends_with(e))
        }
        _ => false,
    }
}

fn rewrite_isolinux(data: &[u8], args: &[String], ctx: &RewriteContext) -> PatchedConfig {
    let mut out_lines: Vec<Vec<u8>> = Vec::new();
    let mut inserts: Vec<(usize, Vec<u8>)> = Vec::new();
    let (mut kernel_lines, mut changed_lines) = (0, 0);
    let mut label: Option<Label> = None;
    // A global APPEND earlier in this file counts like one elsewhere on the boot path.
    let mut global_append = ctx.isolinux_global_append;
    let plain = |a: &str| a.to_string();
    let finish = |label: Option<Label>,
                  global_append: bool,
                  inserts: &mut Vec<(usize, Vec<u8>)>,
                  kernel_lines: &mut usize,
                  changed_lines: &mut usize| {
        let Some(l) = label else { return };
        if !l.boots_linux {
            return;
        }
        *kernel_lines += 1;
        if l.changed {
            *changed_lines += 1;
        }
        if !l.has_append
            && !global_append
            && let Some((at, indent, eol)) = l.kernel_line
        {
            let mut line = indent;
            line.extend_from_slice(b"APPEND");
            for a in args {
                line.push(b' ');
                line.extend_from_slice(a.as_bytes());
            }
            line.extend_from_slice(&eol);
            inserts.push((at + 1, line));
            *changed_lines += 1;
        }
    };
    for line in data.split_inclusive(|b| *b == b'\n') {
        let body = strip_eol(line);
        let words = plain_words(body);
        let kw = isolinux_keyword(&words);
        let idx = out_lines.len();
        match kw.as_ref().map(|(k, n)| (k.as_str(), *n)) {
            Some(("label", _)) => {
                finish(
                    label.take(),
                    global_append,
                    &mut inserts,
                    &mut kernel_lines,
                    &mut changed_lines,
                );
                label = Some(Label {
                    kernel_line: None,
                    boots_linux: false,
                    has_append: false,
                    appended: false,
                    changed: false,
                });
            }
            Some((k @ ("kernel" | "linux"), n)) if label.is_some() => {
                let image = words.get(n).map(|w| text(&w.0)).unwrap_or_default();
                let l = label.as_mut().unwrap();
                l.boots_linux = is_linux_image(k, &image);
                let indent = body[..words[0].1].to_vec();
                l.kernel_line = Some((idx, indent, line[body.len()..].to_vec()));
            }
            Some(("append", n)) => {
                // `APPEND -`: no arguments (overrides a global APPEND): ours replace the `-`.
                let dash = words.len() == n + 1 && words[n].0 == b"-";
                let new = if dash {
                    let mut v = body[..words[n].1].to_vec();
                    v.extend_from_slice(args.join(" ").as_bytes());
                    v.extend_from_slice(&line[body.len()..]);
                    Some(v)
                } else {
                    add_to_line(&[line], &words, args, plain)
                };
                if let Some(l) = label.as_mut() {
                    l.has_append = true;
                    l.appended = true;
                    l.changed |= new.is_some();
                } else {
                    // A global APPEND counts for the labels that use it; count the line itself.
                    global_append = true;
                    kernel_lines += 1;
                    changed_lines += usize::from(new.is_some());
                }
                out_lines.push(new.unwrap_or_else(|| line.to_vec()));
                continue;
            }
            Some((k @ ("default" | "ontimeout"), n)) if words.len() > n + 1 => {
                // A whole command line (`DEFAULT /vmlinuz initrd=... quiet`): a kernel line too.
                let image = text(&words[n].0);
                if k == "ontimeout" || is_linux_image("kernel", &image) {
                    kernel_lines += 1;
                    if let Some(new) = add_to_line(&[line], &words, args, plain) {
                        changed_lines += 1;
                        out_lines.push(new);
                        continue;
                    }
                }
            }
            _ => {}
        }
        out_lines.push(line.to_vec());
    }
    finish(
        label.take(),
        global_append,
        &mut inserts,
        &mut kernel_lines,
        &mut changed_lines,
    );
    for (at, line) in inserts.into_iter().rev() {
        out_lines.insert(at, line);
    }
    PatchedConfig {
        data: out_lines.concat(),
        kernel_lines,
        changed_lines,
    }
}

/// Splits a kernel command line given by an operator into words (whitespace separated,
/// double or single quotes group words).
pub fn split_kernel_args(s: &str) -> Vec<String> {
    grub_words(s.as_bytes())
        .0
        .into_iter()
        .map(|(w, ..)| String::from_utf8_lossy(&w).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn grub(cfg: &str, a: &[&str]) -> PatchedConfig {
        append_kernel_args(ConfigKind::Grub, cfg.as_bytes(), &args(a))
    }

    fn isolinux(cfg: &str, a: &[&str], global: bool) -> PatchedConfig {
        let ctx = RewriteContext {
            isolinux_global_append: global,
            ..Default::default()
        };
        append_kernel_args_with(ConfigKind::Isolinux, cfg.as_bytes(), &args(a), &ctx)
    }

    fn s(p: &PatchedConfig) -> String {
        String::from_utf8(p.data.clone()).unwrap()
    }

    #[test]
    fn grub_lines_get_args_once() {
        let cfg = "set timeout=1\nmenuentry 'x' {\n  linux /vmlinuz quiet # comment\n  initrd /initrd\n}\nmenuentry y {\n\tlinuxefi /k\r\n\tlinux16 /k a\n}\n";
        let a = ["talos.config=metal-iso", "x=a b"];
        let p = grub(cfg, &a);
        let out = s(&p);
        assert_eq!((p.kernel_lines, p.changed_lines), (3, 3));
        assert!(
            out.contains("  linux /vmlinuz quiet talos.config=metal-iso 'x=a b' # comment\n"),
            "{out}"
        );
        assert!(
            out.contains("\tlinuxefi /k talos.config=metal-iso 'x=a b'\r\n"),
            "{out}"
        );
        assert!(out.contains("\tlinux16 /k a talos.config=metal-iso 'x=a b'\n"));
        assert!(out.contains("  initrd /initrd\n"));
        let again = grub(&out, &a);
        assert_eq!(again.data, p.data);
        assert_eq!(again.changed_lines, 0);
    }

    #[test]
    fn grub_kernel_command_in_a_variable() {
        // Kairos (elemental) and kiwi before 10.0.1.
        let cfg = "set linux=linux\nset initrd=initrd\nif [ \"${grub_platform}\" = \"efi\" ]; then\n  set linux=linuxefi\n  set initrd=initrdefi\nfi\nmenuentry \"Kairos\" {\n  $linux ($root)/boot/kernel cdroot root=live:CDLABEL=COS_LIVE ${extra_cmdline}\n  $initrd ($root)/boot/initrd\n}\nmenuentry b {\n    ${linux} ($root)/boot/kernel rd.cos.disable\n}\n";
        let p = grub(cfg, &["config_url=http://h/c"]);
        let out = s(&p);
        assert_eq!((p.kernel_lines, p.changed_lines), (2, 2), "{out}");
        assert!(
            out.contains("  $linux ($root)/boot/kernel cdroot root=live:CDLABEL=COS_LIVE ${extra_cmdline} config_url=http://h/c\n"),
            "{out}"
        );
        assert!(
            out.contains("    ${linux} ($root)/boot/kernel rd.cos.disable config_url=http://h/c\n")
        );
        assert!(out.contains("  $initrd ($root)/boot/initrd\n"));
        // A variable that holds something else is not a kernel line.
        let p = grub("set x=echo\n$x hello\n", &["a=1"]);
        assert_eq!(p.kernel_lines, 0);
        // The variable may be set in another file: the context says so.
        let ctx = RewriteContext {
            grub_kernel_vars: ["linux".to_string()].into(),
            ..Default::default()
        };
        let p = append_kernel_args_with(
            ConfigKind::Grub,
            b"menuentry a {\n $linux /k\n}\n",
            &args(&["a=1"]),
            &ctx,
        );
        assert_eq!(s(&p), "menuentry a {\n $linux /k a=1\n}\n");
    }

    #[test]
    fn grub_arguments_go_before_a_double_dash() {
        let p = grub("linux /k quiet -- single\n", &["a=1", "b=2"]);
        assert_eq!(s(&p), "linux /k quiet a=1 b=2 -- single\n");
        // Debian's `---` is an ordinary word for the kernel: arguments go at the end.
        let p = grub("linux /k vga=788 --- quiet\n", &["a=1"]);
        assert_eq!(s(&p), "linux /k vga=788 --- quiet a=1\n");
    }

    #[test]
    fn grub_continuation_lines() {
        let p = grub("linux /k a \\\n  b\ninitrd /i\n", &["c=1"]);
        assert_eq!(s(&p), "linux /k a \\\n  b c=1\ninitrd /i\n");
    }

    #[test]
    fn grub_references_with_prefix() {
        let sc = scan_config(
            ConfigKind::Grub,
            b"search --no-floppy --file --set=root /boot/kernel\nset prefix=($root)/boot/grub2\nconfigfile $prefix/grub.cfg\nif [ -f x ]; then source \"/.snapshots/grub-snapshot.cfg\"; fi\n. ${prefix}/extra.cfg\nsource $unknown/a.cfg\n",
        );
        let paths: Vec<&str> = sc.references.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "/boot/grub2/grub.cfg",
                "/.snapshots/grub-snapshot.cfg",
                "/boot/grub2/extra.cfg",
                "$unknown/a.cfg"
            ]
        );
    }

    #[test]
    fn isolinux_labels_and_global_append() {
        let cfg = "DEFAULT x\nLABEL x\n  KERNEL /k\n  APPEND initrd=/i quiet\nlabel y\n  kernel /k\n  append initrd=/i\n# append commented\nlabel m\n  kernel vesamenu.c32\n";
        let p = isolinux(cfg, &["a=1", "quiet"], false);
        let out = s(&p);
        assert_eq!((p.kernel_lines, p.changed_lines), (2, 2), "{out}");
        assert!(out.contains("  APPEND initrd=/i quiet a=1\n"), "{out}");
        assert!(out.contains("  append initrd=/i a=1 quiet\n"), "{out}");
        assert!(out.contains("# append commented\n"));
        assert!(out.contains("  kernel vesamenu.c32\n"));
        let again = isolinux(&out, &["a=1", "quiet"], false);
        assert_eq!(again.data, p.data);
        assert_eq!(again.changed_lines, 0);
    }

    #[test]
    fn isolinux_label_without_append() {
        // No global APPEND anywhere: the label gets one after its KERNEL line.
        let cfg = "label a\r\n\tkernel /vmlinuz\r\n\tinitrd /initrd\r\n";
        let p = isolinux(cfg, &["a=1"], false);
        assert_eq!(
            s(&p),
            "label a\r\n\tkernel /vmlinuz\r\n\tAPPEND a=1\r\n\tinitrd /initrd\r\n"
        );
        assert_eq!((p.kernel_lines, p.changed_lines), (1, 1));
        // With a global APPEND, adding one to the label would drop the global one: the global
        // line carries the arguments instead.
        let p = isolinux(cfg, &["a=1"], true);
        assert_eq!(s(&p), cfg);
        let p = isolinux("append quiet\nlabel a\n kernel /k\n", &["a=1"], false);
        assert_eq!(s(&p), "append quiet a=1\nlabel a\n kernel /k\n");
        // `APPEND -`: none of the global ones; ours replace the dash.
        let p = isolinux("label a\n kernel /k\n append -\n", &["a=1", "b=2"], true);
        assert_eq!(s(&p), "label a\n kernel /k\n append a=1 b=2\n");
    }

    #[test]
    fn isolinux_inline_default_and_double_dash() {
        let p = isolinux(
            "default /vmlinuz initrd=/i quiet\nontimeout linux initrd=/i -- x\n",
            &["a=1"],
            false,
        );
        assert_eq!(
            s(&p),
            "default /vmlinuz initrd=/i quiet a=1\nontimeout linux initrd=/i a=1 -- x\n"
        );
        // `default NAME` only names a label.
        let p = isolinux("default install\n", &["a=1"], false);
        assert_eq!((p.kernel_lines, p.data.len()), (0, 16));
    }

    #[test]
    fn isolinux_references() {
        let sc = scan_config(
            ConfigKind::Isolinux,
            b"INCLUDE /syslinux/syslinux.cfg\nmenu include txt.cfg Install\nlabel help\n  config prompt.cfg\n  CONFIG /isolinux/x.cfg /isolinux\n",
        );
        let r: Vec<(&str, Option<&str>)> = sc
            .references
            .iter()
            .map(|r| (r.path.as_str(), r.new_directory.as_deref()))
            .collect();
        assert_eq!(
            r,
            vec![
                ("/syslinux/syslinux.cfg", None),
                ("txt.cfg", None),
                ("prompt.cfg", Some("")),
                ("/isolinux/x.cfg", Some("/isolinux"))
            ]
        );
    }

    #[test]
    fn non_kernel_words_untouched() {
        let p = grub("linuxfoo x\nset linux=1\n", &["a"]);
        assert_eq!(p.kernel_lines, 0);
        assert_eq!(p.data, b"linuxfoo x\nset linux=1\n");
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
