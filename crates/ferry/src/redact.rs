//! Credentials never leave the process (DESIGN rule 7): every URI and every error message that
//! may quote one goes through here before it is logged, printed or served.

/// Replaces the password of a MongoDB connection string with `****`.
///
/// Works on strings that are not valid URIs too, and on text that embeds a URI (driver error
/// messages), so it is safe to apply to anything that is about to be shown.
pub fn redact_uri(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_scheme(rest) {
        let (before, from_scheme) = rest.split_at(start);
        out.push_str(before);
        let scheme_len = from_scheme.find("://").map(|i| i + 3).unwrap_or(0);
        let (scheme, after_scheme) = from_scheme.split_at(scheme_len);
        out.push_str(scheme);
        let authority_end = after_scheme
            .find(|c: char| c == '/' || c == '?' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(after_scheme.len());
        let authority = &after_scheme[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                let user = userinfo.split(':').next().unwrap_or("");
                out.push_str(user);
                if userinfo.contains(':') {
                    out.push_str(":****");
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after_scheme[authority_end..];
    }
    out.push_str(rest);
    redact_password_options(&out)
}

fn find_scheme(text: &str) -> Option<usize> {
    ["mongodb://", "mongodb+srv://"]
        .iter()
        .filter_map(|s| text.find(s))
        .min()
}

/// Options that carry secrets in the query string (`tlsCertificateKeyFilePassword`, ...).
fn redact_password_options(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(pos) = lower.find("password=") else {
            out.push_str(rest);
            return out;
        };
        let value_start = pos + "password=".len();
        out.push_str(&rest[..value_start]);
        out.push_str("****");
        let value_len = rest[value_start..]
            .find(|c: char| c == '&' || c.is_whitespace() || c == '"')
            .unwrap_or(rest.len() - value_start);
        rest = &rest[value_start + value_len..];
    }
}

#[cfg(test)]
mod tests {
    use super::redact_uri;

    #[test]
    fn hides_the_password_and_keeps_the_rest() {
        assert_eq!(
            redact_uri("mongodb://alice:s3cr3t@h1:27017,h2/?replicaSet=rs0"),
            "mongodb://alice:****@h1:27017,h2/?replicaSet=rs0"
        );
        assert_eq!(
            redact_uri("error connecting to mongodb+srv://bob:p%40ss@cluster.example/db: refused"),
            "error connecting to mongodb+srv://bob:****@cluster.example/db: refused"
        );
    }

    #[test]
    fn leaves_uris_without_credentials_alone() {
        assert_eq!(
            redact_uri("mongodb://h1/?directConnection=true"),
            "mongodb://h1/?directConnection=true"
        );
        assert_eq!(redact_uri("no uri here"), "no uri here");
    }

    #[test]
    fn hides_password_options_and_passwords_with_at_signs() {
        assert_eq!(
            redact_uri("mongodb://u:a@b@h/?tls=true&tlsCertificateKeyFilePassword=xyz&w=1"),
            "mongodb://u:****@h/?tls=true&tlsCertificateKeyFilePassword=****&w=1"
        );
    }
}
