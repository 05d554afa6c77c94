//! The few facts of a PE/COFF (EFI) image the patch needs: its sections (a UKI's `.cmdline`,
//! systemd's `.sdmagic` marker) and whether it carries an Authenticode signature.
//!
//! A signature lives in the certificate table (data directory 4 of the optional header); Secure
//! Boot firmware refuses an image whose signature does not verify, and systemd-stub ignores a
//! command line passed to a signed UKI that has a `.cmdline` under Secure Boot.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeError {
    #[error("not a PE image: {0}")]
    NotPe(&'static str),
}

/// One section header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub raw_size: u32,
    pub raw_offset: u32,
}

impl Section {
    /// File bytes of the section that hold data (`VirtualSize` may be less than the
    /// file-aligned raw size; the rest is padding).
    pub fn data_len(&self) -> u32 {
        if self.virtual_size == 0 {
            self.raw_size
        } else {
            self.virtual_size.min(self.raw_size)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeImage {
    pub machine: u16,
    pub subsystem: u16,
    pub sections: Vec<Section>,
    /// File offset and size of the certificate table (0, 0 when unsigned).
    pub certificates: (u32, u32),
}

fn u16le(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32le(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// Bytes of the start of a file that [`parse`] needs at most (headers and section table).
pub const HEADER_BYTES: usize = 64 << 10;

/// Parses the headers from the first bytes of an image (up to [`HEADER_BYTES`]).
pub fn parse(head: &[u8]) -> Result<PeImage, PeError> {
    if head.get(..2) != Some(b"MZ") {
        return Err(PeError::NotPe("no MZ header"));
    }
    let pe = u32le(head, 0x3c).ok_or(PeError::NotPe("truncated DOS header"))? as usize;
    if head.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(PeError::NotPe("no PE signature"));
    }
    let coff = pe + 4;
    let machine = u16le(head, coff).ok_or(PeError::NotPe("truncated COFF header"))?;
    let nsections = u16le(head, coff + 2).ok_or(PeError::NotPe("truncated COFF header"))? as usize;
    let opt_size = u16le(head, coff + 16).ok_or(PeError::NotPe("truncated COFF header"))? as usize;
    let opt = coff + 20;
    let magic = u16le(head, opt).ok_or(PeError::NotPe("no optional header"))?;
    // PE32 (0x10b) and PE32+ (0x20b) differ in where the data directories start.
    let (dirs_at, ndirs_at) = match magic {
        0x10b => (opt + 96, opt + 92),
        0x20b => (opt + 112, opt + 108),
        _ => return Err(PeError::NotPe("unknown optional header magic")),
    };
    let subsystem = u16le(head, opt + 68).ok_or(PeError::NotPe("truncated optional header"))?;
    let ndirs = u32le(head, ndirs_at).ok_or(PeError::NotPe("truncated optional header"))?;
    let certificates = if ndirs > 4 && dirs_at + 5 * 8 <= opt + opt_size {
        (
            u32le(head, dirs_at + 4 * 8).unwrap_or(0),
            u32le(head, dirs_at + 4 * 8 + 4).unwrap_or(0),
        )
    } else {
        (0, 0)
    };
    let table = opt + opt_size;
    let mut sections = Vec::with_capacity(nsections.min(96));
    for i in 0..nsections.min(96) {
        let s = table + i * 40;
        let h = head
            .get(s..s + 40)
            .ok_or(PeError::NotPe("section table beyond the header bytes"))?;
        let raw_name = &h[..8];
        let end = raw_name.iter().position(|b| *b == 0).unwrap_or(8);
        sections.push(Section {
            name: String::from_utf8_lossy(&raw_name[..end]).into_owned(),
            virtual_size: u32le(h, 8).unwrap_or(0),
            virtual_address: u32le(h, 12).unwrap_or(0),
            raw_size: u32le(h, 16).unwrap_or(0),
            raw_offset: u32le(h, 20).unwrap_or(0),
        });
    }
    Ok(PeImage {
        machine,
        subsystem,
        sections,
        certificates,
    })
}

impl PeImage {
    /// The first section with this name.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// A UKI's base `.cmdline`: the first one, before any `.profile` section (the profiles of a
    /// multi-profile UKI carry their own).
    pub fn base_section(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .take_while(|s| s.name != ".profile")
            .find(|s| s.name == name)
    }

    /// An Authenticode signature is present.
    pub fn is_signed(&self) -> bool {
        self.certificates.0 != 0 && self.certificates.1 != 0
    }

    /// A unified kernel image: a stub with the kernel in `.linux`.
    pub fn is_uki(&self) -> bool {
        self.section(".linux").is_some()
    }
}

/// Text of a section as systemd writes them (`.cmdline`, `.sdmagic`, `.osrel`): UTF-8, NUL
/// padded.
pub fn section_text(data: &[u8]) -> String {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ header with the given sections and certificate directory.
    fn tiny_pe(sections: &[(&str, u32, u32)], cert: (u32, u32)) -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        b[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        b[coff + 2..coff + 4].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        let opt_size = 240u16;
        b[coff + 16..coff + 18].copy_from_slice(&opt_size.to_le_bytes());
        let opt = coff + 20;
        b[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        b[opt + 68..opt + 70].copy_from_slice(&10u16.to_le_bytes());
        b[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        b[opt + 112 + 32..opt + 112 + 36].copy_from_slice(&cert.0.to_le_bytes());
        b[opt + 112 + 36..opt + 112 + 40].copy_from_slice(&cert.1.to_le_bytes());
        let table = opt + opt_size as usize;
        for (i, (name, off, size)) in sections.iter().enumerate() {
            let s = table + i * 40;
            b[s..s + name.len()].copy_from_slice(name.as_bytes());
            b[s + 8..s + 12].copy_from_slice(&size.to_le_bytes());
            b[s + 16..s + 20].copy_from_slice(&size.next_multiple_of(512).to_le_bytes());
            b[s + 20..s + 24].copy_from_slice(&off.to_le_bytes());
        }
        b
    }

    #[test]
    fn sections_and_signature() {
        let pe = parse(&tiny_pe(
            &[
                (".text", 0x400, 16),
                (".cmdline", 0x600, 20),
                (".profile", 0x800, 8),
                (".cmdline", 0xa00, 30),
                (".linux", 0xc00, 100),
            ],
            (0, 0),
        ))
        .unwrap();
        assert_eq!(pe.machine, 0x8664);
        assert_eq!(pe.subsystem, 10);
        assert!(pe.is_uki() && !pe.is_signed());
        assert_eq!(pe.base_section(".cmdline").unwrap().raw_offset, 0x600);
        assert_eq!(pe.base_section(".cmdline").unwrap().data_len(), 20);
        let signed = parse(&tiny_pe(&[(".text", 0x400, 16)], (0x1000, 0x800))).unwrap();
        assert!(signed.is_signed() && !signed.is_uki());
        assert_eq!(parse(b"MZ"), Err(PeError::NotPe("truncated DOS header")));
        assert_eq!(parse(b"\x7fELF"), Err(PeError::NotPe("no MZ header")));
        assert_eq!(section_text(b"a=1 b=2\n\0\0"), "a=1 b=2");
    }
}
