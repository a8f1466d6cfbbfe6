//! The project's test schema against the real Cuebot schema: every table and column of ours
//! exists there with the same type, length, nullability and default.

use crate::support::{shared_file, Schema, TestDb};

/// (table, column, data type, length, nullable, default)
type Column = (String, String, String, Option<i32>, String, Option<String>);

fn columns(db: &TestDb) -> Vec<Column> {
    let mut client = db.client();
    client
        .query(
            "SELECT table_name::text, column_name::text, data_type::text, character_maximum_length::int,
                    is_nullable::text, column_default::text
             FROM information_schema.columns WHERE table_schema = 'public'
             ORDER BY 1, 2",
            &[],
        )
        .expect("columns")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect()
}

#[test]
fn project_schema_matches_the_real_schema() {
    if shared_file("schema.sql").is_none() {
        eprintln!("../shared/cuebot/schema.sql absent: conformance skipped");
        return;
    }
    let ours = TestDb::new("conform", Schema::Project).expect("project schema");
    let real = TestDb::new("conform", Schema::Real).expect("real schema");
    let real_columns = columns(&real);
    let mut missing = Vec::new();
    let ours_columns = columns(&ours);
    assert!(ours_columns.len() > 300, "project schema looks empty");
    for column in ours_columns {
        if !real_columns.contains(&column) {
            missing.push(format!("{column:?}"));
        }
    }
    assert!(missing.is_empty(), "columns differing from Cuebot's schema:\n{}", missing.join("\n"));
}
