//! The harness that feeds what a hostile guest could send to the code the host reads it
//! with: [`FrameDecoder`] and [`decode_guest_message`].
//!
//! Input layout: the first byte is the size of the reads the bytes arrive in (1 to 256),
//! the rest is the byte stream from the guest. The harness decodes frames until the
//! stream ends or the decoder rejects it (after which the host drops the connection), and
//! checks the decoder's bounds as it goes; it panics only when a bound is broken. The
//! cargo-fuzz target `agent_frames` (in `fuzz/`) runs it under libFuzzer; this crate's
//! tests run it over generated inputs on every build.

use crate::{decode_guest_message, FrameDecoder, FrameKind, HEADER_AFTER_LEN, MAX_FRAME_LEN};

/// What one input came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamOutcome {
    /// Frames taken out of the stream.
    pub frames: usize,
    /// Control frames that decoded into a guest message.
    pub messages: usize,
    /// Whether the decoder rejected the stream.
    pub rejected: bool,
}

/// Decodes `data` as the host decodes a guest's stream (see the module docs).
pub fn guest_stream(data: &[u8]) -> StreamOutcome {
    let mut outcome = StreamOutcome::default();
    let Some((&first, stream)) = data.split_first() else {
        return outcome;
    };
    let read_size = usize::from(first) + 1;
    let mut decoder = FrameDecoder::new();
    for read in stream.chunks(read_size) {
        decoder.push(read);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    outcome.frames += 1;
                    let most = (MAX_FRAME_LEN - HEADER_AFTER_LEN) as usize;
                    assert!(frame.payload.len() <= most, "a frame beyond the limit");
                    if frame.kind == FrameKind::Control && decode_guest_message(&frame).is_ok() {
                        outcome.messages += 1;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    outcome.rejected = true;
                    return outcome;
                }
            }
        }
        // What is held is at most one frame's worth plus the read that completed it.
        assert!(
            decoder.pending() <= 4 + MAX_FRAME_LEN as usize + read_size,
            "the decoder holds {} bytes",
            decoder.pending()
        );
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_control, encode_frame, GuestMessage, ProcessStatus, AGENT_STREAM};

    /// A stream an honest agent could send: every kind of message and some output.
    fn honest_stream() -> Vec<u8> {
        let messages = [
            GuestMessage::Hello {
                protocol: crate::PROTOCOL_VERSION,
                kernel: "6.1.0-cloud-amd64".into(),
            },
            GuestMessage::SetupDone {
                steps_us: vec![("root".into(), 120), ("network".into(), 40)],
            },
            GuestMessage::Started { pid: 1 },
            GuestMessage::Reattached {
                protocol: crate::PROTOCOL_VERSION,
                processes: vec![ProcessStatus {
                    stream: 1,
                    pid: 1,
                    exit: Some((3, None)),
                }],
            },
            GuestMessage::InterfaceReady {
                name: "eth1".into(),
            },
            GuestMessage::Error {
                message: "no such file".into(),
            },
            GuestMessage::Exited {
                code: 0,
                signal: None,
                oom_killed: false,
            },
        ];
        let mut wire = Vec::new();
        for (index, message) in messages.iter().enumerate() {
            wire.extend(encode_control(AGENT_STREAM, message));
            wire.extend(encode_frame(1, FrameKind::Stdout, &[b'x'; 40][..index * 5]));
        }
        wire
    }

    /// xorshift64: generated inputs that are the same on every run.
    struct Generator(u64);

    impl Generator {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound.max(1) as u64) as usize
        }
    }

    /// The honest stream, damaged as a hostile or broken guest would damage it.
    fn mutate(generator: &mut Generator, mut wire: Vec<u8>) -> Vec<u8> {
        for _ in 0..=generator.below(4) {
            let at = generator.below(wire.len());
            match generator.below(6) {
                0 => wire[at] ^= 1 << generator.below(8),
                1 => wire[at] = generator.next() as u8,
                2 => wire.truncate(at),
                3 => {
                    // A length field of any size where a frame starts or anywhere.
                    let value = (generator.next() as u32).to_le_bytes();
                    let end = (at + 4).min(wire.len());
                    wire[at..end].copy_from_slice(&value[..end - at]);
                }
                4 => {
                    let copy: Vec<u8> = wire[at..].iter().take(64).copied().collect();
                    wire.splice(at..at, copy);
                }
                _ => wire.insert(at, generator.next() as u8),
            }
            if wire.is_empty() {
                break;
            }
        }
        wire
    }

    #[test]
    fn an_honest_stream_decodes_whole_in_reads_of_any_size() {
        let wire = honest_stream();
        for read_size in [1u8, 3, 9, 64, 255] {
            let mut input = vec![read_size - 1];
            input.extend(&wire);
            let outcome = guest_stream(&input);
            assert_eq!(
                outcome,
                StreamOutcome {
                    frames: 14,
                    messages: 7,
                    rejected: false
                },
                "reads of {read_size}"
            );
        }
    }

    #[test]
    fn damaged_streams_are_rejected_or_decoded_never_a_panic() {
        let honest = honest_stream();
        let mut generator = Generator(0x9e37_79b9_7f4a_7c15);
        let (mut rejected, mut fewer_messages) = (0, 0);
        for _ in 0..20_000 {
            let mut input = vec![generator.next() as u8];
            input.extend(mutate(&mut generator, honest.clone()));
            let outcome = guest_stream(&input);
            rejected += usize::from(outcome.rejected);
            fewer_messages += usize::from(outcome.messages < 7);
        }
        // The damage must reach both the framing and the messages.
        assert!(rejected > 1_000, "{rejected} streams rejected");
        assert!(
            fewer_messages > 5_000,
            "{fewer_messages} streams lost a message"
        );
    }

    #[test]
    fn a_flood_of_empty_frames_costs_each_frame_its_own_size() {
        // 64 KiB reads of 9-byte frames after a frame of the largest size: all decode.
        // (The decoder used to move the rest of the read after each frame: 3 GB of
        // copying for this input, 5 times the time it takes now.)
        let mut wire = encode_frame(1, FrameKind::Stdout, &vec![0u8; 1 << 20]);
        for _ in 0..100_000 {
            wire.extend(encode_frame(1, FrameKind::Stdout, b""));
        }
        let mut input = vec![255u8];
        input.extend(&wire);
        let mut decoder = FrameDecoder::new();
        let mut frames = 0;
        for read in wire.chunks(64 * 1024) {
            decoder.push(read);
            while let Some(_frame) = decoder.next_frame().unwrap() {
                frames += 1;
            }
        }
        assert_eq!(frames, 100_001);
        assert_eq!(decoder.pending(), 0);
        assert_eq!(guest_stream(&input).frames, 100_001);
    }
}
