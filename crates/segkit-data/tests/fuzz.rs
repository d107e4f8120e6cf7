//! Property tests: arbitrary bytes and text never make the decoders panic.

use proptest::prelude::*;
use segkit_data::ClassSet;
use segkit_data::classes::parse_yaml_names;
use segkit_data::mask::{MaskEncoding, decode_png, to_labels};
use segkit_data::yolo::parse_labels;

/// A valid PNG header followed by arbitrary bytes reaches deeper into the decoder than noise.
fn png_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|mut v| {
            let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
            out.append(&mut v);
            out
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn mask_decoder_never_panics(bytes in png_like()) {
        if let Ok(raw) = decode_png(&bytes) {
            let classes = ClassSet::numbered(3, 255);
            for enc in [MaskEncoding::Auto, MaskEncoding::Index, MaskEncoding::Palette, MaskEncoding::Binary, MaskEncoding::Rgb] {
                let _ = to_labels(&raw, enc, &classes);
            }
        }
    }

    #[test]
    fn polygon_parser_never_panics(text in "[0-9 .e\\-+\\n\\tnaif]{0,200}", n in 0usize..5) {
        let _ = parse_labels(&text, n);
    }

    #[test]
    fn yaml_names_never_panic(text in "(names|nc|:|\\[|\\]|'|\"|,|-| |\\n|[a-z0-9]){0,120}") {
        let _ = parse_yaml_names(&text);
    }
}
