//! The fixed newstyle handshake and option haggling, up to the moment the
//! client enters transmission (or leaves).
//!
//! Every option is read whole (its length is bounded by [`MAX_OPTION_DATA`];
//! a longer one is skipped in bounded pieces and refused with
//! `NBD_REP_ERR_TOO_BIG`), so a malformed option never leaves the two sides
//! out of step. Options this server does not implement are answered with
//! `NBD_REP_ERR_UNSUP`, as fixed newstyle requires.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use std::io::{Read, Write};

use super::proto::*;
use super::{SessionEnd, SessionError};

/// The most option data read into memory: the longest meaningful option is
/// `NBD_OPT_GO` with a 4096-byte name and a handful of information requests.
pub(crate) const MAX_OPTION_DATA: u32 = 64 << 10;

/// What the handshake offers: one export.
pub(crate) struct Export<'a> {
    /// The export's name (the empty name, the default export, is always accepted too).
    pub name: &'a str,
    /// A description for `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    pub description: &'a str,
    /// The export's size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// `NBD_INFO_BLOCK_SIZE`: minimum, preferred, maximum.
    pub block_sizes: (u32, u32, u32),
}

impl Export<'_> {
    fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
}

/// How option haggling ended.
pub(crate) enum Outcome {
    /// The client chose the export: transmission begins.
    Transmission,
    /// The session ended during the handshake.
    Ended(SessionEnd),
}

fn read_u32<S: Read>(s: &mut S) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// Reads and throws away `len` bytes, in bounded pieces.
pub(crate) fn discard<S: Read>(s: &mut S, mut len: u64) -> std::io::Result<()> {
    let mut sink = [0u8; 8192];
    while len > 0 {
        let n = len.min(sink.len() as u64) as usize;
        s.read_exact(&mut sink[..n])?;
        len -= n as u64;
    }
    Ok(())
}

fn reply<S: Write>(s: &mut S, option: u32, kind: u32, data: &[u8]) -> std::io::Result<()> {
    s.write_all(&encode_option_reply(option, kind, data))
}

/// An error reply with a message for humans.
fn reply_error<S: Write>(s: &mut S, option: u32, kind: u32, message: &str) -> std::io::Result<()> {
    reply(s, option, kind, message.as_bytes())
}

/// The name of an option, for messages.
fn option_name(option: u32) -> String {
    match option {
        OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME".into(),
        OPT_ABORT => "NBD_OPT_ABORT".into(),
        OPT_LIST => "NBD_OPT_LIST".into(),
        OPT_STARTTLS => "NBD_OPT_STARTTLS".into(),
        OPT_INFO => "NBD_OPT_INFO".into(),
        OPT_GO => "NBD_OPT_GO".into(),
        OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY".into(),
        other => format!("option {other}"),
    }
}

/// The parsed data of `NBD_OPT_INFO` / `NBD_OPT_GO`: the name and the
/// information types asked for. `None` when the lengths do not add up.
fn parse_info_request(data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4usize.checked_add(name_len)?)?;
    let rest = &data[4 + name_len..];
    let count = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let list = &rest[2..];
    if list.len() != count * 2 {
        return None;
    }
    Some((name, list.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect()))
}

/// Sends the greeting and haggles until the client enters transmission or
/// leaves. `admit` is called when the client has chosen the export, before
/// the reply that starts transmission; its error ends the connection.
pub(crate) fn negotiate<S: Read + Write>(
    s: &mut S,
    export: &Export<'_>,
    admit: &mut dyn FnMut() -> std::io::Result<()>,
) -> Result<Outcome, SessionError> {
    let mut greeting = [0u8; 18];
    greeting[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    greeting[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    greeting[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&greeting)?;
    s.flush()?;
    let client_flags = read_u32(s)?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(SessionError::Protocol(format!("unknown client flags {client_flags:#010x}")));
    }
    // A client without NBD_FLAG_C_FIXED_NEWSTYLE still gets fixed-newstyle
    // replies (the specification allows it); such a client only ever sends
    // NBD_OPT_EXPORT_NAME, which has no reply header.
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    loop {
        let mut head = [0u8; 16];
        s.read_exact(&mut head)?;
        let magic = u64::from_be_bytes(head[0..8].try_into().expect("8 bytes"));
        let option = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(head[12..16].try_into().expect("4 bytes"));
        if magic != IHAVEOPT {
            return Err(SessionError::Protocol(format!("bad option magic {magic:#018x}")));
        }
        if len > MAX_OPTION_DATA {
            discard(s, len as u64)?;
            if option == OPT_EXPORT_NAME {
                return Err(SessionError::Protocol(format!("NBD_OPT_EXPORT_NAME with {len} bytes of name")));
            }
            let message =
                format!("{} with {len} bytes of data: at most {MAX_OPTION_DATA} accepted", option_name(option));
            reply_error(s, option, REP_ERR_TOO_BIG, &message)?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                if !export.matches(&data) {
                    // No error reply exists for this option: the session ends.
                    return Err(SessionError::Protocol(format!(
                        "NBD_OPT_EXPORT_NAME asked for the unknown export {:?}",
                        String::from_utf8_lossy(&data)
                    )));
                }
                admit()?;
                let mut out = Vec::with_capacity(10 + 124);
                out.extend_from_slice(&export.size.to_be_bytes());
                out.extend_from_slice(&export.flags.to_be_bytes());
                if !no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&out)?;
                s.flush()?;
                return Ok(Outcome::Transmission);
            }
            OPT_ABORT => {
                // The client may already have gone; the session ends either way.
                let _ = reply(s, option, REP_ACK, &[]).and_then(|()| s.flush());
                return Ok(Outcome::Ended(SessionEnd::Aborted));
            }
            OPT_LIST => {
                if !data.is_empty() {
                    reply_error(s, option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data")?;
                } else {
                    let mut server = Vec::new();
                    server.extend_from_slice(&(export.name.len() as u32).to_be_bytes());
                    server.extend_from_slice(export.name.as_bytes());
                    server.extend_from_slice(export.description.as_bytes());
                    reply(s, option, REP_SERVER, &server)?;
                    reply(s, option, REP_ACK, &[])?;
                }
            }
            OPT_INFO | OPT_GO => {
                let Some((name, requests)) = parse_info_request(&data) else {
                    let message = format!("{}: malformed data of {len} bytes", option_name(option));
                    reply_error(s, option, REP_ERR_INVALID, &message)?;
                    s.flush()?;
                    continue;
                };
                if !export.matches(name) {
                    let message = format!(
                        "unknown export {:?}; this server exports {:?}",
                        String::from_utf8_lossy(name),
                        export.name
                    );
                    reply_error(s, option, REP_ERR_UNKNOWN, &message)?;
                    s.flush()?;
                    continue;
                }
                if option == OPT_GO {
                    admit()?;
                }
                send_info(s, option, export, &requests)?;
                reply(s, option, REP_ACK, &[])?;
                s.flush()?;
                if option == OPT_GO {
                    return Ok(Outcome::Transmission);
                }
            }
            _ => {
                let message = format!("{} is not supported by this server", option_name(option));
                reply_error(s, option, REP_ERR_UNSUP, &message)?;
            }
        }
        s.flush()?;
    }
}

/// The `NBD_REP_INFO` replies: the export's size and flags always, its block
/// size constraints always (clients ignore what they did not ask for), its
/// name and description when asked.
fn send_info<S: Write>(s: &mut S, option: u32, export: &Export<'_>, requests: &[u16]) -> std::io::Result<()> {
    let mut info = Vec::with_capacity(12);
    info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    info.extend_from_slice(&export.size.to_be_bytes());
    info.extend_from_slice(&export.flags.to_be_bytes());
    reply(s, option, REP_INFO, &info)?;
    let (min, preferred, max) = export.block_sizes;
    let mut sizes = Vec::with_capacity(14);
    sizes.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for v in [min, preferred, max] {
        sizes.extend_from_slice(&v.to_be_bytes());
    }
    reply(s, option, REP_INFO, &sizes)?;
    if requests.contains(&INFO_NAME) {
        let mut name = Vec::from(INFO_NAME.to_be_bytes());
        name.extend_from_slice(export.name.as_bytes());
        reply(s, option, REP_INFO, &name)?;
    }
    if requests.contains(&INFO_DESCRIPTION) && !export.description.is_empty() {
        let mut description = Vec::from(INFO_DESCRIPTION.to_be_bytes());
        description.extend_from_slice(export.description.as_bytes());
        reply(s, option, REP_INFO, &description)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_request_lengths_must_add_up() {
        let mut ok = Vec::new();
        ok.extend_from_slice(&3u32.to_be_bytes());
        ok.extend_from_slice(b"abc");
        ok.extend_from_slice(&2u16.to_be_bytes());
        ok.extend_from_slice(&[0, 3, 0, 1]);
        let (name, req) = parse_info_request(&ok).unwrap();
        assert_eq!(name, b"abc");
        assert_eq!(req, [INFO_BLOCK_SIZE, INFO_NAME]);
        assert!(parse_info_request(&ok[..ok.len() - 1]).is_none(), "a truncated list");
        let mut long = ok.clone();
        long.push(0);
        assert!(parse_info_request(&long).is_none(), "trailing bytes");
        let mut huge_name = ok.clone();
        huge_name[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_info_request(&huge_name).is_none(), "a name longer than the data");
        assert!(parse_info_request(&[0, 0, 0]).is_none());
        assert_eq!(parse_info_request(&[0, 0, 0, 0, 0, 0]).unwrap(), (&b""[..], Vec::new()));
    }
}
