//! Codec tests. The byte snapshots were produced independently with Python's
//! `cbor2` encoding the same maps in the same key order, so they pin the wire
//! format, not just this encoder's habits.

use super::*;

fn peer(s: &str) -> PeerId {
    PeerId::new(s).expect("peer id")
}

fn storage(s: &str) -> StorageId {
    StorageId::new(s).expect("storage id")
}

fn doc() -> DocumentId {
    DocumentId::from_bytes([7; 16])
}

fn samples() -> Vec<(Message, &'static str)> {
    vec![
        (
            Message::Join {
                sender_id: peer("client-1"),
                supported_protocol_versions: vec!["1".into()],
                peer_metadata: Some(PeerMetadata {
                    storage_id: Some(storage("store-1")),
                    is_ephemeral: false,
                    extensions: Vec::new(),
                }),
            },
            "a46474797065646a6f696e6873656e646572496468636c69656e742d317819737570706f7274656450726f746f636f6c56657273696f6e738161316c706565724d65746164617461a26973746f7261676549646773746f72652d316b6973457068656d6572616cf4",
        ),
        (
            Message::Peer {
                sender_id: peer("server"),
                target_id: peer("client-1"),
                selected_protocol_version: "1".into(),
                peer_metadata: Some(PeerMetadata::default()),
            },
            "a5647479706564706565726873656e64657249646673657276657268746172676574496468636c69656e742d317773656c656374656450726f746f636f6c56657273696f6e61316c706565724d65746164617461a16b6973457068656d6572616cf4",
        ),
        (
            Message::Leave {
                sender_id: peer("client-1"),
            },
            "a26474797065656c656176656873656e646572496468636c69656e742d31",
        ),
        (
            Message::Request {
                sender_id: peer("client-1"),
                target_id: peer("server"),
                document_id: doc(),
                data: vec![0x42, 0x00],
            },
            "a5647479706567726571756573746873656e646572496468636c69656e742d31687461726765744964667365727665726a646f63756d656e744964781b36674d48586a735a356378646e34715362674759595938436e4b4b6464617461424200",
        ),
        (
            Message::Sync {
                sender_id: peer("server"),
                target_id: peer("client-1"),
                document_id: doc(),
                data: vec![0x42, 0x01],
            },
            "a564747970656473796e636873656e64657249646673657276657268746172676574496468636c69656e742d316a646f63756d656e744964781b36674d48586a735a356378646e34715362674759595938436e4b4b6464617461424201",
        ),
        (
            Message::DocUnavailable {
                sender_id: peer("server"),
                target_id: peer("client-1"),
                document_id: doc(),
            },
            "a464747970656f646f632d756e617661696c61626c656873656e64657249646673657276657268746172676574496468636c69656e742d316a646f63756d656e744964781b36674d48586a735a356378646e34715362674759595938436e4b4b",
        ),
        (
            Message::Ephemeral {
                sender_id: peer("client-1"),
                target_id: peer("server"),
                count: 3,
                session_id: "s-1".into(),
                document_id: doc(),
                data: vec![0xa0],
            },
            "a7647479706569657068656d6572616c6873656e646572496468636c69656e742d316874617267657449646673657276657265636f756e74036973657373696f6e496463732d316a646f63756d656e744964781b36674d48586a735a356378646e34715362674759595938436e4b4b646461746141a0",
        ),
        (
            Message::Error {
                message: "bad".into(),
                sender_id: Some(peer("server")),
                target_id: Some(peer("client-1")),
            },
            "a46474797065656572726f726873656e64657249646673657276657268746172676574496468636c69656e742d31676d65737361676563626164",
        ),
        (
            Message::RemoteSubscriptionChange {
                sender_id: peer("client-1"),
                target_id: peer("server"),
                add: vec![storage("store-2")],
                remove: vec![],
            },
            "a56474797065781a72656d6f74652d737562736372697074696f6e2d6368616e67656873656e646572496468636c69656e742d316874617267657449646673657276657263616464816773746f72652d326672656d6f766580",
        ),
        (
            Message::RemoteHeadsChanged {
                sender_id: peer("server"),
                target_id: peer("client-1"),
                document_id: doc(),
                new_heads: [(
                    storage("store-2"),
                    RemoteHeads {
                        heads: vec!["aGVhZA==".into()],
                        timestamp: 1_700_000_000_000,
                    },
                )]
                .into_iter()
                .collect(),
            },
            "a564747970657472656d6f74652d68656164732d6368616e6765646873656e64657249646673657276657268746172676574496468636c69656e742d316a646f63756d656e744964781b36674d48586a735a356378646e34715362674759595938436e4b4b686e65774865616473a16773746f72652d32a26568656164738168614756685a413d3d6974696d657374616d701b0000018bcfe56800",
        ),
    ]
}

#[test]
fn every_message_matches_its_byte_snapshot_and_round_trips() {
    let limits = Limits::default();
    for (message, snapshot) in samples() {
        let bytes = encode(&message);
        assert_eq!(
            hex::encode(&bytes),
            snapshot,
            "{} snapshot",
            message.type_name()
        );
        assert_eq!(decode(&bytes, &limits), Ok(message));
    }
}

#[test]
fn decoding_accepts_any_key_order_and_skips_unknown_fields() {
    // {"extra": [1, {"x": 2}], "senderId": "c", "type": "leave"}
    let mut e = Encoder::new(Vec::new());
    e.map(3).expect("cbor");
    e.str("extra")
        .expect("cbor")
        .array(2)
        .expect("cbor")
        .u8(1)
        .expect("cbor");
    e.map(1)
        .expect("cbor")
        .str("x")
        .expect("cbor")
        .u8(2)
        .expect("cbor");
    e.str("senderId").expect("cbor").str("c").expect("cbor");
    e.str("type").expect("cbor").str("leave").expect("cbor");
    let message = decode(&e.into_writer(), &Limits::default());
    assert_eq!(
        message,
        Ok(Message::Leave {
            sender_id: peer("c")
        })
    );
}

#[test]
fn decoding_accepts_the_spec_single_version_and_metadata_spelling() {
    let mut e = Encoder::new(Vec::new());
    e.map(4).expect("cbor");
    e.str("type").expect("cbor").str("join").expect("cbor");
    e.str("senderId").expect("cbor").str("c").expect("cbor");
    e.str("supportedProtocolVersions")
        .expect("cbor")
        .str("1")
        .expect("cbor");
    e.str("metadata").expect("cbor").map(1).expect("cbor");
    e.str("isEphemeral")
        .expect("cbor")
        .bool(true)
        .expect("cbor");
    let message = decode(&e.into_writer(), &Limits::default()).expect("join");
    assert_eq!(
        message,
        Message::Join {
            sender_id: peer("c"),
            supported_protocol_versions: vec!["1".into()],
            peer_metadata: Some(PeerMetadata {
                storage_id: None,
                is_ephemeral: true,
                extensions: Vec::new(),
            }),
        }
    );
}

#[test]
fn bad_input_is_malformed_not_a_panic() {
    let limits = Limits::default();
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff],
        vec![0x01],                                  // an integer, not a map
        hex::decode("a1647479706563").expect("hex"), // truncated
        hex::decode("a164747970650a").expect("hex"), // type is a number
        // a sync without data
        hex::decode("a364747970656473796e636873656e646572496461636874617267657449646173")
            .expect("hex"),
        // a byte string that claims 4 GiB inside a 10-byte frame
        hex::decode("a164646174615affffffff00").expect("hex"),
    ];
    for case in cases {
        match decode(&case, &limits) {
            Err(DecodeError::Malformed(_)) => {}
            other => panic!("{} decoded to {other:?}", hex::encode(&case)),
        }
    }
}

#[test]
fn unknown_types_and_bad_document_ids_are_reported() {
    let limits = Limits::default();
    let mut e = Encoder::new(Vec::new());
    e.map(2).expect("cbor");
    e.str("type").expect("cbor").str("teleport").expect("cbor");
    e.str("senderId").expect("cbor").str("c").expect("cbor");
    assert_eq!(
        decode(&e.into_writer(), &limits),
        Err(DecodeError::UnknownType("teleport".into()))
    );

    let mut e = Encoder::new(Vec::new());
    e.map(4).expect("cbor");
    e.str("type")
        .expect("cbor")
        .str("doc-unavailable")
        .expect("cbor");
    e.str("senderId").expect("cbor").str("c").expect("cbor");
    e.str("targetId").expect("cbor").str("s").expect("cbor");
    e.str("documentId")
        .expect("cbor")
        .str("not-base58!")
        .expect("cbor");
    assert!(matches!(
        decode(&e.into_writer(), &limits),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn limits_are_checked_before_decoding() {
    let limits = Limits {
        max_frame_bytes: 8,
        max_items: 2,
        inflate: None,
    };
    assert_eq!(
        decode(&[0u8; 9], &limits),
        Err(DecodeError::TooLarge { size: 9, limit: 8 })
    );
    // An indefinite map with more entries than allowed.
    let frame = hex::decode("bf61610161620161630dff").expect("hex");
    assert!(matches!(
        decode(
            &frame,
            &Limits {
                max_frame_bytes: 64,
                max_items: 2,
                inflate: None,
            }
        ),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn extensions_and_counted_heads_round_trip_and_are_absent_when_unused() {
    let limits = Limits::default();
    let mut counted = BTreeMap::new();
    counted.insert(doc(), vec!["ab".repeat(32)]);
    counted.insert(DocumentId::from_bytes([8; 16]), Vec::new());
    let messages = [
        Message::Join {
            sender_id: peer("c"),
            supported_protocol_versions: vec!["1".into()],
            peer_metadata: Some(PeerMetadata {
                storage_id: Some(storage("s")),
                is_ephemeral: false,
                extensions: vec![crate::wire::EXTENSION_COUNTED.into()],
            }),
        },
        Message::CountedRequest {
            sender_id: peer("c"),
            target_id: peer("server"),
        },
        Message::Counted {
            sender_id: peer("server"),
            target_id: peer("c"),
            counted,
        },
    ];
    for message in messages {
        let bytes = encode(&message);
        assert_eq!(decode(&bytes, &limits), Ok(message));
    }
    // Without extensions the metadata is what a stock peer writes.
    let plain = encode(&Message::Peer {
        sender_id: peer("server"),
        target_id: peer("c"),
        selected_protocol_version: "1".into(),
        peer_metadata: Some(PeerMetadata::default()),
    });
    assert!(!plain.windows(18).any(|w| w == b"doorstepExtensions"));
    // More extensions than the item limit are refused before collecting.
    let mut e = Encoder::new(Vec::new());
    e.map(4).expect("cbor");
    e.str("type").and_then(|e| e.str("join")).expect("cbor");
    e.str("senderId").and_then(|e| e.str("c")).expect("cbor");
    e.str("supportedProtocolVersions")
        .and_then(|e| e.str("1"))
        .expect("cbor");
    e.str("peerMetadata")
        .and_then(|e| e.map(1))
        .and_then(|e| e.str("doorstepExtensions"))
        .and_then(|e| e.array(5000))
        .expect("cbor");
    for _ in 0..5000 {
        e.str("x").expect("cbor");
    }
    assert!(matches!(
        decode(&e.into_writer(), &limits),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn a_deflated_message_round_trips_and_a_small_one_stays_plain() {
    let limits = Limits {
        inflate: Some(Inflate::FROM_DEVICE),
        ..Limits::default()
    };
    let big = Message::Sync {
        sender_id: peer("server"),
        target_id: peer("c"),
        document_id: doc(),
        data: b"visit visit visit ".repeat(500),
    };
    let deflated = encode_deflated(&big, Inflate::FROM_DEVICE);
    assert!(
        deflated.len() * 5 < encode(&big).len(),
        "{}",
        deflated.len()
    );
    assert_eq!(decode(&deflated, &limits), Ok(big));
    // Not negotiated: refused, not inflated.
    assert!(matches!(
        decode(&deflated, &Limits::default()),
        Err(DecodeError::Malformed(m)) if m.contains("not negotiated")
    ));
    let small = Message::Leave {
        sender_id: peer("c"),
    };
    assert_eq!(
        encode_deflated(&small, Inflate::FROM_DEVICE),
        encode(&small)
    );
}

// Found by the disk-full generator: a visit whose notes repeat one phrase
// deflated past the server's ratio, and the SDK sent it compressed on
// every try, refused every time.
#[test]
fn a_message_that_deflates_past_the_receivers_ratio_is_padded_up_to_it() {
    let limits = Limits {
        inflate: Some(Inflate::FROM_DEVICE),
        ..Limits::default()
    };
    for repeats in [200, 4_000, 40_000, 400_000] {
        let repetitive = Message::Sync {
            sender_id: peer("c"),
            target_id: peer("server"),
            document_id: doc(),
            data: "备注".repeat(repeats).into_bytes(),
        };
        let plain = encode(&repetitive).len();
        let frame = encode_deflated(&repetitive, Inflate::FROM_DEVICE);
        assert_eq!(decode(&frame, &limits), Ok(repetitive.clone()), "{repeats}");
        // Still far smaller than plain, and padded no further than the
        // ratio needs (a block and the frame's envelope over the larger of
        // the ratio's share and the unpadded stream).
        let to_device = encode_deflated(&repetitive, Inflate::FROM_SERVER);
        assert!(
            frame.len() * 4 < plain,
            "{repeats}: {} of {plain}",
            frame.len()
        );
        let needed = (plain / Inflate::FROM_DEVICE.max_ratio).max(to_device.len());
        assert!(
            frame.len() <= needed + 64,
            "{repeats}: {} of {plain}",
            frame.len()
        );
        // For a receiver without a ratio (a device, from its server) there
        // is nothing to pad.
        assert!(to_device.len() <= frame.len(), "{repeats}");
        assert_eq!(
            decode(
                &to_device,
                &Limits {
                    inflate: Some(Inflate::FROM_SERVER),
                    ..Limits::default()
                }
            ),
            Ok(repetitive)
        );
    }
}

/// A `doorstep-deflated` frame around `compressed`.
fn deflated_frame(compressed: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.map(2).expect("cbor");
    e.str("type")
        .and_then(|e| e.str("doorstep-deflated"))
        .expect("cbor");
    e.str("data")
        .and_then(|e| e.bytes(compressed))
        .expect("cbor");
    e.into_writer()
}

#[test]
fn a_deflate_bomb_is_refused_at_the_frame_limit() {
    use std::io::Write;
    let limits = Limits {
        max_frame_bytes: 1024 * 1024,
        max_items: 4096,
        inflate: Some(Inflate::FROM_SERVER),
    };
    // 64 MiB of zeros deflate to about 64 kB.
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..64 {
        deflate.write_all(&zeros).expect("deflate");
    }
    let bomb = deflated_frame(&deflate.finish().expect("deflate"));
    assert!(bomb.len() < 128 * 1024);
    assert_eq!(
        decode(&bomb, &limits),
        Err(DecodeError::TooLarge {
            size: limits.max_frame_bytes + 1,
            limit: limits.max_frame_bytes
        })
    );
    // Garbage and a deflated frame inside a deflated frame are malformed.
    assert!(matches!(
        decode(&deflated_frame(b"\xff\xff\xff"), &limits),
        Err(DecodeError::Malformed(_))
    ));
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    deflate.write_all(&deflated_frame(b"x")).expect("deflate");
    let nested = deflated_frame(&deflate.finish().expect("deflate"));
    assert!(matches!(
        decode(&nested, &limits),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn a_device_frame_inflates_at_most_its_ratio() {
    use std::io::Write;
    let limits = Limits {
        max_frame_bytes: 32 * 1024 * 1024,
        max_items: 4096,
        inflate: Some(Inflate::FROM_DEVICE),
    };
    // 4 MiB of zeros deflate to about 4 kB: far past 32x, so inflating
    // stops at 32 times the compressed bytes, not at the 32 MiB frame limit.
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    deflate
        .write_all(&vec![0u8; 4 * 1024 * 1024])
        .expect("deflate");
    let compressed = deflate.finish().expect("deflate");
    let limit = (compressed.len() * 32).max(Inflate::FLOOR_BYTES);
    assert!(limit < 256 * 1024, "{limit}");
    assert_eq!(
        decode(&deflated_frame(&compressed), &limits),
        Err(DecodeError::TooLarge {
            size: limit + 1,
            limit
        })
    );
}

/// The decoder under fuzzing (issue 15), over the committed corpus of
/// `samples()` (each plain and deflated) and random bytes: no input panics;
/// whatever decodes re-encodes to a frame that decodes to the same message.
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::mutation::{Mutation, mutate};

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            3 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
            3 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
            1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
            1 => any::<usize>().prop_map(Mutation::Remove),
            1 => any::<usize>().prop_map(Mutation::Truncate),
        ]
    }

    /// The corpus: every sample message, plain and deflated.
    fn corpus() -> Vec<Vec<u8>> {
        samples()
            .into_iter()
            .flat_map(|(message, _)| {
                [
                    encode(&message),
                    encode_deflated(&message, Inflate::FROM_SERVER),
                ]
            })
            .collect()
    }

    fn limits() -> Limits {
        Limits {
            inflate: Some(Inflate::FROM_DEVICE),
            ..Limits::default()
        }
    }

    fn decodes_cleanly(frame: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(message) = decode(frame, &limits()) {
            let again = decode(&encode(&message), &limits());
            prop_assert_eq!(again.ok(), Some(message), "re-encoding changed the message");
        }
        Ok(())
    }

    /// Writes the corpus where the libFuzzer target starts from:
    /// `cargo test -p doorstep-protocol write_fuzz_corpus -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/corpus/wire_decode for the nightly libFuzzer runs"]
    fn write_fuzz_corpus() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/wire_decode");
        std::fs::create_dir_all(&dir).expect("corpus folder");
        for (n, frame) in corpus().iter().enumerate() {
            std::fs::write(dir.join(format!("sample-{n:03}")), frame).expect("corpus file");
        }
    }

    #[test]
    fn the_corpus_decodes() {
        for frame in corpus() {
            assert!(decode(&frame, &limits()).is_ok(), "{}", hex::encode(&frame));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn random_frames_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..1024)) {
            decodes_cleanly(&frame)?;
        }

        #[test]
        fn mutated_frames_never_panic(
            pick in any::<usize>(),
            mutations in proptest::collection::vec(mutation(), 1..8),
        ) {
            let corpus = corpus();
            let mut frame = corpus[pick % corpus.len()].clone();
            mutate(&mut frame, &mutations);
            decodes_cleanly(&frame)?;
        }
    }
}
