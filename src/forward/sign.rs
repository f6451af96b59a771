//! Signatures per the Standard Webhooks specification, so that any receiver can check
//! that a delivery came from this Pyron and drop one it has seen.
//!
//! Three headers go with each request: `webhook-id` (the delivery's id, the same on every
//! attempt), `webhook-timestamp` (seconds since the epoch at sending) and
//! `webhook-signature`: `v1,` and the base64 HMAC-SHA256, keyed with the secret, of
//! `<id>.<timestamp>.<body>`. The secret is written `whsec_` followed by the key in
//! base64, as the specification's libraries take it.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A decoded signing key, keyed into HMAC once (every signature starts from a copy).
/// Never printed.
#[derive(Clone)]
pub struct SigningKey(Hmac<Sha256>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

impl SigningKey {
    /// Reads `whsec_<base64>`; the specification asks for 24 to 64 bytes of key.
    pub fn parse(secret: &str) -> Result<SigningKey, String> {
        let Some(encoded) = secret.strip_prefix("whsec_") else {
            return Err("a signing secret is written whsec_ followed by the key in base64".into());
        };
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| "the signing secret after whsec_ is not base64".to_owned())?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "the signing key is {} bytes; use 24 to 64 (32 random bytes is usual)",
                key.len()
            ));
        }
        Ok(SigningKey(
            Hmac::new_from_slice(&key).expect("HMAC takes any key length"),
        ))
    }

    /// The `webhook-signature` header's value.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        /// Text written straight into the MAC, without a string between.
        struct Feed<'a>(&'a mut Hmac<Sha256>);
        impl std::fmt::Write for Feed<'_> {
            fn write_str(&mut self, text: &str) -> std::fmt::Result {
                self.0.update(text.as_bytes());
                Ok(())
            }
        }
        let mut mac = self.0.clone();
        std::fmt::Write::write_fmt(&mut Feed(&mut mac), format_args!("{id}.{timestamp}."))
            .expect("writing into a MAC does not fail");
        mac.update(body);
        // "v1," and the 44 characters of a SHA-256 in base64.
        let mut signature = String::with_capacity(47);
        signature.push_str("v1,");
        STANDARD.encode_string(mac.finalize().into_bytes(), &mut signature);
        signature
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the specification's reference libraries: this secret, id, timestamp
    /// and payload give this signature.
    #[test]
    fn signs_as_the_reference_example() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_bad_secret_says_what_is_wrong() {
        assert!(
            SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap_err()
                .contains("whsec_")
        );
        assert!(
            SigningKey::parse("whsec_%%%")
                .unwrap_err()
                .contains("base64")
        );
        assert!(
            SigningKey::parse("whsec_c2hvcnQ=")
                .unwrap_err()
                .contains("24 to 64")
        );
    }
}
