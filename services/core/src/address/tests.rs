//! Unit tests of address normalisation.

use super::*;

fn pinned(kind: AddressKind, region: Option<&str>) -> Normaliser {
    Addressing {
        address_kind: Some(kind),
        default_region: region.map(str::to_owned),
    }
    .normaliser()
    .expect("valid addressing")
}

fn detect(region: Option<&str>) -> Normaliser {
    Addressing {
        address_kind: None,
        default_region: region.map(str::to_owned),
    }
    .normaliser()
    .expect("valid addressing")
}

#[test]
fn phone_numbers_become_e164_with_or_without_a_default_region() {
    let phone = pinned(AddressKind::Phone, Some("BR"));
    for typed in [
        "+55 11 98765-4321",
        "(11) 98765-4321",
        " +5511987654321 ",
        "011 98765 4321",
    ] {
        assert_eq!(
            phone.normalise(typed).unwrap(),
            Normalised {
                address: "+5511987654321".into(),
                kind: AddressKind::Phone
            },
            "{typed}"
        );
    }
    let no_region = pinned(AddressKind::Phone, None);
    assert_eq!(
        no_region.normalise("+1 (202) 555-0123").unwrap().address,
        "+12025550123"
    );
    let error = no_region.normalise("(11) 98765-4321").unwrap_err();
    assert!(error.to_string().contains("default_region"), "{error}");
}

#[test]
fn a_pinned_phone_channel_refuses_what_is_not_a_valid_number() {
    let phone = pinned(AddressKind::Phone, Some("US"));
    for bad in ["+1555", "hello", "ana@example.com", "+99 123"] {
        assert!(
            matches!(phone.normalise(bad), Err(AddressError::NotAPhoneNumber(_))),
            "{bad}"
        );
    }
}

#[test]
fn e_mail_domains_are_lower_cased_and_local_parts_kept() {
    let email = pinned(AddressKind::Email, None);
    assert_eq!(
        email.normalise("Ana@Example.COM").unwrap(),
        Normalised {
            address: "Ana@example.com".into(),
            kind: AddressKind::Email
        }
    );
    for bad in [
        "ana",
        "ana@localhost",
        "Ana <ana@example.com>",
        "+5511987654321",
    ] {
        assert!(
            matches!(email.normalise(bad), Err(AddressError::NotAnEmail(_))),
            "{bad}"
        );
    }
}

#[test]
fn detection_finds_e_mails_and_valid_numbers_and_leaves_the_rest_opaque() {
    let auto = detect(None);
    assert_eq!(
        auto.normalise("ana@Example.com").unwrap().kind,
        AddressKind::Email
    );
    assert_eq!(
        auto.normalise("+55 11 98765-4321").unwrap(),
        Normalised {
            address: "+5511987654321".into(),
            kind: AddressKind::Phone
        }
    );
    // E.164 as written is taken as it is, valid number or not.
    assert_eq!(
        auto.normalise(" +15550001 ").unwrap(),
        Normalised {
            address: "+15550001".into(),
            kind: AddressKind::Phone
        }
    );
    // Not valid numbers, and numbers without + and without a region: opaque,
    // only trimmed.
    assert_eq!(
        auto.normalise("+1 (555) 000-1").unwrap(),
        Normalised {
            address: "+15550001".into(),
            kind: AddressKind::Phone
        },
        "separators removed from what is not a valid number"
    );
    for typed in [
        "+100",
        "+0123456789",
        "11987654321",
        "user-42",
        "1-800-FLOWERS",
    ] {
        let found = auto.normalise(&format!(" {typed} ")).unwrap();
        assert_eq!(found.kind, AddressKind::Opaque, "{typed}");
        assert_eq!(found.address, typed);
    }
    assert_eq!(
        detect(Some("BR"))
            .normalise("(11) 98765-4321")
            .unwrap()
            .address,
        "+5511987654321"
    );
    assert_eq!(
        pinned(AddressKind::Opaque, None)
            .normalise(" Ana@Example.COM ")
            .unwrap(),
        Normalised {
            address: "Ana@Example.COM".into(),
            kind: AddressKind::Opaque
        }
    );
}

#[test]
fn empty_long_and_control_character_addresses_are_refused_whatever_the_kind() {
    let auto = detect(None);
    assert_eq!(auto.normalise("  "), Err(AddressError::Empty));
    assert_eq!(auto.normalise(&"9".repeat(321)), Err(AddressError::TooLong));
    assert_eq!(
        auto.normalise("+1\u{7}05"),
        Err(AddressError::ControlCharacters)
    );
}

#[test]
fn addressing_settings_are_checked() {
    let region = |code: &str, kind| Addressing {
        address_kind: kind,
        default_region: Some(code.into()),
    };
    assert!(region("br", None).validate().is_ok());
    assert!(region("BR", Some(AddressKind::Phone)).validate().is_ok());
    for bad in ["XX", "BRA", "1", ""] {
        let error = region(bad, None).validate().unwrap_err();
        assert!(error.contains("channel.default_region"), "{error}");
    }
    assert!(region("BR", Some(AddressKind::Email)).validate().is_err());
    assert!(region("BR", Some(AddressKind::Opaque)).validate().is_err());
}

#[test]
fn stored_configs_are_read_leniently() {
    let config = serde_json::json!({"provider": "log", "address_kind": "email"});
    assert_eq!(
        Addressing::from_config(&config).address_kind,
        Some(AddressKind::Email)
    );
    let old = serde_json::json!({"provider": "log"});
    assert_eq!(Addressing::from_config(&old), Addressing::default());
}
