//! Reading and writing whole frames, blocking (CLI) and async (daemon, services).

use std::io::{ErrorKind, Read, Write};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::MtsError;
use crate::frame::{Frame, HEADER_LEN, Header};

fn short(e: std::io::Error, got: usize, want: usize) -> MtsError {
    if e.kind() == ErrorKind::UnexpectedEof {
        if got == 0 {
            MtsError::Closed
        } else {
            MtsError::Truncated { got, want }
        }
    } else {
        MtsError::Io(e)
    }
}

/// Read one frame from a blocking stream.
pub fn read_frame<R: Read>(r: &mut R, max: u32) -> Result<Frame, MtsError> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) => return Err(short(ErrorKind::UnexpectedEof.into(), got, HEADER_LEN)),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(MtsError::Io(e)),
        }
    }
    let header = Header::decode(&h, max)?;
    let mut payload = vec![0u8; header.len as usize];
    r.read_exact(&mut payload)
        .map_err(|e| short(e, HEADER_LEN + 1, HEADER_LEN + header.len as usize))?;
    Ok(Frame { header, payload })
}

/// Write one frame to a blocking stream.
pub fn write_frame<W: Write>(w: &mut W, f: &Frame) -> Result<(), MtsError> {
    w.write_all(&f.to_bytes())?;
    w.flush()?;
    Ok(())
}

/// Read one frame from an async stream.
pub async fn read_frame_async<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u32,
) -> Result<Frame, MtsError> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut h[got..]).await?;
        if n == 0 {
            return Err(short(ErrorKind::UnexpectedEof.into(), got, HEADER_LEN));
        }
        got += n;
    }
    let header = Header::decode(&h, max)?;
    let mut payload = vec![0u8; header.len as usize];
    r.read_exact(&mut payload)
        .await
        .map_err(|e| short(e, HEADER_LEN + 1, HEADER_LEN + header.len as usize))?;
    Ok(Frame { header, payload })
}

/// Write one frame to an async stream.
pub async fn write_frame_async<W: AsyncWrite + Unpin>(
    w: &mut W,
    f: &Frame,
) -> Result<(), MtsError> {
    w.write_all(&f.to_bytes()).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::DEFAULT_MAX_PAYLOAD;

    #[test]
    fn blocking_round_trip_and_truncation() {
        let f = Frame::request(1, 2, 3, 4, vec![9; 100]);
        let bytes = f.to_bytes();
        let got = read_frame(&mut &bytes[..], DEFAULT_MAX_PAYLOAD).expect("frame");
        assert_eq!(got, f);
        // Lying length: header says 100, only 10 bytes follow.
        let cut = &bytes[..HEADER_LEN + 10];
        assert!(matches!(
            read_frame(&mut &cut[..], DEFAULT_MAX_PAYLOAD),
            Err(MtsError::Truncated { .. })
        ));
        assert!(matches!(
            read_frame(&mut &[][..], DEFAULT_MAX_PAYLOAD),
            Err(MtsError::Closed)
        ));
        assert!(matches!(
            read_frame(&mut &bytes[..5], DEFAULT_MAX_PAYLOAD),
            Err(MtsError::Truncated { got: 5, .. })
        ));
    }
}
