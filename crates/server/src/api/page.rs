//! Pages of list answers (AIP-158): the page size in force, and opaque page
//! tokens that carry where the last page ended and what it was a page of, so
//! that a token sent with another filter (or to another datastore's list) is
//! refused rather than silently answering something else.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::Error;

/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page; larger requests are served this many.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The page size in force for a request's `page_size`.
pub fn size(page_size: i32) -> Result<usize, Error> {
    match page_size {
        n if n < 0 => Err(Error::invalid("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

/// Version tag of the token layout.
const VERSION: &str = "p1";

/// Makes the token that continues after `last` in the list `scope` (e.g. the
/// filter of ListDatastores). Keys are names and paths, which hold no
/// newline; the scope is hashed so that tokens stay short.
pub fn token(scope: &str, last: &str) -> String {
    let text = format!("{VERSION}\n{:016x}\n{last}", fnv1a(scope));
    URL_SAFE_NO_PAD.encode(text)
}

/// The key the page starts after (`None` for the first page), from a
/// request's `page_token`; INVALID_ARGUMENT naming `page_token` if it is not
/// one of ours or belongs to another `scope`.
pub fn after(scope: &str, page_token: &str) -> Result<Option<String>, Error> {
    if page_token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "is not a token this list returned");
    let bytes = URL_SAFE_NO_PAD.decode(page_token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = text.splitn(3, '\n');
    let (Some(VERSION), Some(hash), Some(last)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if hash != format!("{:016x}", fnv1a(scope)) {
        return Err(Error::invalid(
            "page_token",
            "was returned for another request (filter or datastore): send the same one as for the first page",
        ));
    }
    Ok(Some(last.to_string()))
}

/// One page of `items` (sorted by `key`): those after `after`, at most
/// `size`, and the token for the next page if any are left.
pub fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    scope: &str,
    after: Option<&str>,
    size: usize,
) -> (Vec<T>, String) {
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|item| after.is_none_or(|a| key(item) > a))
        .collect();
    if rest.len() <= size {
        return (rest, String::new());
    }
    rest.truncate(size);
    let next = token(scope, key(rest.last().expect("size is at least 1")));
    (rest, next)
}

/// FNV-1a, 64 bits: stable across releases and processes (unlike std's
/// hasher), which a token kept by a client needs.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(0).unwrap(), 100);
        assert_eq!(size(7).unwrap(), 7);
        assert_eq!(size(5000).unwrap(), 1000);
        assert!(size(-1).is_err());
    }

    #[test]
    fn pages_cover_everything_once_and_tokens_are_scoped() {
        let items: Vec<String> = (0..25).map(|i| format!("d{i:03}")).collect();
        let mut seen = Vec::new();
        let mut token_in = String::new();
        loop {
            let start = after("env=lab", &token_in).unwrap();
            let (page, next) = page(
                items.clone(),
                |s| s.as_str(),
                "env=lab",
                start.as_deref(),
                10,
            );
            seen.extend(page);
            if next.is_empty() {
                break;
            }
            assert!(after("env=prod", &next).is_err());
            token_in = next;
        }
        assert_eq!(seen, items);
        assert!(after("", "not a token").is_err());
    }
}
