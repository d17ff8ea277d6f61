//! Which change stands in for which: the mark an import leaves.
//!
//! A phone's edits that never reached the server are carried to another
//! phone in a file and re-made there by that phone's own actor (the server
//! takes a change only from the device whose actor wrote it). The re-made
//! change, a *stand-in*, names the change it stands for, its *original*,
//! in its commit message. The two make the same edits, but every object
//! the original creates the stand-in creates again under another id, and
//! Automerge keeps both under the record's key: were both to meet in one
//! document, a record deleted in between would come back and a correction
//! made to one copy could be hidden by the other. So the server keeps at
//! most one of them in a document (the first to arrive) and refuses the
//! other; the refused phone re-makes what it built on the refused change
//! on top of the one the server kept.

use std::str::FromStr;

use automerge::ChangeHash;

use crate::DocumentId;

/// The commit message of a stand-in: this prefix, then the original's hash.
const STANDS_IN_FOR: &str = "doorstep-import:";

/// The commit message of a change that stands in for `original`.
pub fn stand_in_message(original: &ChangeHash) -> String {
    format!("{STANDS_IN_FOR}{original}")
}

/// The change the change with this commit message stands in for, if it is
/// a stand-in.
pub fn stands_in_for(message: Option<&str>) -> Option<ChangeHash> {
    message?.strip_prefix(STANDS_IN_FOR)?.parse().ok()
}

/// How the server words its refusal of a change whose counterpart (its
/// original, or a stand-in for it) the document already keeps: the
/// document and the refused change, so the phone knows what to re-make.
const REFUSED: &str = "already kept in another form: document ";

/// The refusal's text for `change` in `document`.
pub fn refusal_text(document: DocumentId, change: &ChangeHash) -> String {
    format!("{REFUSED}{document} change {change}; re-make what builds on it")
}

/// The document and change a refusal's text names, if it is one (the
/// whole text, as the server words it: nothing else starts a re-base).
pub fn refused(text: &str) -> Option<(DocumentId, ChangeHash)> {
    let rest = text.strip_prefix(REFUSED)?;
    let (document, rest) = rest.split_once(" change ")?;
    let change = rest.split(';').next()?;
    Some((
        DocumentId::from_str(document).ok()?,
        ChangeHash::from_str(change).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stand_in_names_its_original_and_a_refusal_its_document_and_change() {
        let hash = ChangeHash([7; 32]);
        assert_eq!(stands_in_for(Some(&stand_in_message(&hash))), Some(hash));
        assert_eq!(stands_in_for(Some("an ordinary message")), None);
        assert_eq!(stands_in_for(Some("doorstep-import:not a hash")), None);
        assert_eq!(stands_in_for(None), None);
        let document = DocumentId::roster(crate::TenantId::new_v7());
        let text = refusal_text(document, &hash);
        assert_eq!(refused(&text), Some((document, hash)));
        // Only the server's own words: text that merely quotes them (an
        // HTTP refusal, say) starts nothing.
        assert_eq!(refused(&format!("the server refused: {text}")), None);
        assert_eq!(refused("some other refusal"), None);
        assert_eq!(
            refused("already kept in another form: document x change y"),
            None
        );
    }
}
