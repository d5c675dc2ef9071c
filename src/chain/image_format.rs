//! Which format a file holds.

/// An image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ImageFormat {
    /// Microsoft VHDX.
    Vhdx,
    /// The virtual disk's bytes, nothing else.
    Raw,
    /// Microsoft VHD (version 1), the format VHDX replaced.
    Vhd,
}

impl ImageFormat {
    /// What a file name says: `.raw` and `.img` are raw, `.vhd` VHD,
    /// anything else VHDX.
    #[cfg(feature = "std")]
    pub fn from_path(path: &std::path::Path) -> ImageFormat {
        match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
            Some("raw" | "img") => ImageFormat::Raw,
            Some("vhd" | "avhd") => ImageFormat::Vhd,
            _ => ImageFormat::Vhdx,
        }
    }

    /// `"vhdx"`, `"raw"` or `"vhd"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Vhdx => "vhdx",
            ImageFormat::Raw => "raw",
            ImageFormat::Vhd => "vhd",
        }
    }
}
