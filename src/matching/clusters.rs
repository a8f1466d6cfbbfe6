//! Cluster selection: discovery rows from the database become clusters scoped to (facility,
//! show), filtered by explicit `--alloc_tags` / `--manual_tags` and `ignore_tags`, and chunked
//! deterministically (scheduler-behaviour.md §2).

use crate::model::{Cluster, ClusterKind};
use crate::db::queries::ClusterRow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What the operator asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    /// (show name, alloc tag) pairs.
    pub alloc_tags: Vec<(String, String)>,
    /// Manual tags, each optionally scoped to a show name.
    pub manual_tags: Vec<(Option<String>, String)>,
    pub ignore_tags: Vec<String>,
    pub manual_tags_chunk_size: usize,
    pub hostname_tags_chunk_size: usize,
}

impl Selection {
    pub fn is_explicit(&self) -> bool {
        !self.alloc_tags.is_empty() || !self.manual_tags.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SelectionError {
    pub unmatched: Vec<String>,
}

impl fmt::Display for SelectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "these cluster selections match nothing in the database (check show names, tags and the facility): {}",
            self.unmatched.join(", ")
        )
    }
}

impl std::error::Error for SelectionError {}

/// Parses a `show:tag` entry: exactly two trimmed, non-empty parts.
pub fn parse_show_tag(entry: &str) -> Result<(String, String), String> {
    let parts: Vec<&str> = entry.split(':').map(str::trim).collect();
    match parts.as_slice() {
        [show, tag] if !show.is_empty() && !tag.is_empty() => Ok((show.to_string(), tag.to_string())),
        _ => Err(format!("Invalid format: expected 'show:tag', got '{entry}'")),
    }
}

/// Parses a manual-tag entry: `show:tag` or a bare `tag`.
pub fn parse_manual_tag(entry: &str) -> Result<(Option<String>, String), String> {
    if entry.contains(':') {
        parse_show_tag(entry).map(|(show, tag)| (Some(show), tag))
    } else if entry.trim().is_empty() {
        Err("empty manual tag".into())
    } else {
        Ok((None, entry.trim().to_string()))
    }
}

fn row_selected(row: &ClusterRow, selection: &Selection, used: &mut BTreeSet<usize>) -> bool {
    if !selection.is_explicit() {
        return true;
    }
    match row.kind {
        ClusterKind::Alloc => selection.alloc_tags.iter().enumerate().any(|(i, (show, tag))| {
            let hit = *show == row.show_name && *tag == row.tag;
            if hit {
                used.insert(i);
            }
            hit
        }),
        ClusterKind::Manual => selection.manual_tags.iter().enumerate().any(|(i, (show, tag))| {
            let hit = *tag == row.tag && show.as_ref().is_none_or(|s| *s == row.show_name);
            if hit {
                used.insert(selection.alloc_tags.len() + i);
            }
            hit
        }),
        ClusterKind::Hostname | ClusterKind::Hardware => false,
    }
}

/// Builds the sorted cluster list: allocation clusters, then manual, hostname and hardware
/// chunks, each chunk a sorted run of one (facility, show, kind)'s tags.
pub fn build(rows: &[ClusterRow], selection: &Selection) -> Result<Vec<Cluster>, SelectionError> {
    let mut used = BTreeSet::new();
    let mut alloc: BTreeSet<Cluster> = BTreeSet::new();
    type TagKey = (ClusterKind, String, String, String, String);
    let mut tagged: BTreeMap<TagKey, BTreeSet<String>> = BTreeMap::new();
    for row in rows {
        if selection.ignore_tags.contains(&row.tag) || !row_selected(row, selection, &mut used) {
            continue;
        }
        if row.kind == ClusterKind::Alloc {
            alloc.insert(Cluster {
                facility_id: row.facility_id.clone(),
                facility_name: row.facility_name.clone(),
                show_id: row.show_id.clone(),
                show_name: row.show_name.clone(),
                kind: ClusterKind::Alloc,
                tags: vec![row.tag.clone()],
                alloc_id: row.alloc_id.clone(),
            });
        } else {
            let key = (row.kind, row.facility_id.clone(), row.facility_name.clone(), row.show_id.clone(), row.show_name.clone());
            tagged.entry(key).or_default().insert(row.tag.clone());
        }
    }
    let unmatched: Vec<String> = selection
        .alloc_tags
        .iter()
        .map(|(s, t)| format!("alloc {s}:{t}"))
        .chain(selection.manual_tags.iter().map(|(s, t)| match s {
            Some(s) => format!("manual {s}:{t}"),
            None => format!("manual {t}"),
        }))
        .enumerate()
        .filter(|(i, _)| !used.contains(i))
        .map(|(_, name)| name)
        .collect();
    if !unmatched.is_empty() {
        return Err(SelectionError { unmatched });
    }
    let mut clusters: Vec<Cluster> = alloc.into_iter().collect();
    let mut chunked: Vec<Cluster> = Vec::new();
    for ((kind, facility_id, facility_name, show_id, show_name), tags) in tagged {
        let size = match kind {
            ClusterKind::Hostname => selection.hostname_tags_chunk_size,
            _ => selection.manual_tags_chunk_size,
        }
        .max(1);
        let tags: Vec<String> = tags.into_iter().collect();
        for chunk in tags.chunks(size) {
            chunked.push(Cluster {
                facility_id: facility_id.clone(),
                facility_name: facility_name.clone(),
                show_id: show_id.clone(),
                show_name: show_name.clone(),
                kind,
                tags: chunk.to_vec(),
                alloc_id: None,
            });
        }
    }
    chunked.sort_by(|a, b| a.kind.cmp(&b.kind).then_with(|| a.cmp(b)));
    clusters.extend(chunked);
    Ok(clusters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: ClusterKind, show: &str, tag: &str) -> ClusterRow {
        ClusterRow {
            facility_id: "F".into(),
            facility_name: "lax".into(),
            show_id: format!("id-{show}"),
            show_name: show.into(),
            kind,
            tag: tag.into(),
            alloc_id: (kind == ClusterKind::Alloc).then(|| format!("alloc-{tag}")),
        }
    }

    fn selection(chunk: usize) -> Selection {
        Selection { manual_tags_chunk_size: chunk, hostname_tags_chunk_size: chunk, ..Selection::default() }
    }

    #[test]
    fn discovery_orders_alloc_then_manual_chunks_per_show() {
        let rows = vec![
            row(ClusterKind::Manual, "a", "m3"),
            row(ClusterKind::Alloc, "a", "general"),
            row(ClusterKind::Manual, "a", "m1"),
            row(ClusterKind::Manual, "a", "m2"),
            row(ClusterKind::Manual, "b", "m1"),
            row(ClusterKind::Hostname, "a", "host1"),
        ];
        let clusters = build(&rows, &selection(2)).expect("no explicit selection");
        let shown: Vec<String> = clusters.iter().map(|c| format!("{}/{}", c.kind.label(), c)).collect();
        assert_eq!(
            shown,
            ["alloc/lax:a:general", "manual/lax:a:m1,m2", "manual/lax:a:m3", "manual/lax:b:m1", "hostname/lax:a:host1"]
        );
    }

    #[test]
    fn explicit_selection_scopes_to_show_and_reports_misses() {
        let rows = vec![row(ClusterKind::Alloc, "a", "general"), row(ClusterKind::Manual, "a", "m1"), row(ClusterKind::Manual, "b", "m1")];
        let mut sel = selection(50);
        sel.manual_tags = vec![(Some("b".into()), "m1".into())];
        let clusters = build(&rows, &sel).expect("b:m1 exists");
        assert_eq!(clusters.len(), 1);
        assert_eq!(clusters[0].show_name, "b");
        sel.alloc_tags = vec![("a".into(), "nope".into())];
        let err = build(&rows, &sel).expect_err("a:nope matches nothing");
        assert_eq!(err.unmatched, ["alloc a:nope"]);
    }

    #[test]
    fn ignore_tags_drop_rows_of_every_kind() {
        let rows = vec![row(ClusterKind::Alloc, "a", "general"), row(ClusterKind::Manual, "a", "m1")];
        let mut sel = selection(50);
        sel.ignore_tags = vec!["general".into(), "m1".into()];
        assert!(build(&rows, &sel).expect("ok").is_empty());
    }

    #[test]
    fn show_tag_entries_parse_strictly() {
        let cases = [("s:t", Ok(("s".to_string(), "t".to_string()))), (" s : t ", Ok(("s".into(), "t".into())))];
        for (input, want) in cases {
            assert_eq!(parse_show_tag(input), want, "{input}");
        }
        for bad in ["s", "s:", ":t", "a:b:c"] {
            assert_eq!(parse_show_tag(bad), Err(format!("Invalid format: expected 'show:tag', got '{bad}'")));
        }
        assert_eq!(parse_manual_tag("fx"), Ok((None, "fx".into())));
        assert_eq!(parse_manual_tag("s:fx"), Ok((Some("s".into()), "fx".into())));
    }
}
