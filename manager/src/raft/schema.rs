//! The version of what the raft database holds (log entries, snapshots), checked when a
//! manager opens it: a database written by a newer shoal is refused in plain words rather
//! than misread; older ones are read as they are (each format change keeps a reader of the
//! previous one and a test of it).
//!
//! 1. Before the version was recorded: snapshots as one JSON document holding meta and data.
//! 2. Snapshot meta and data stored apart (`state_machine`); log entries unchanged.

use redb::{Database, ReadableDatabase, TableDefinition};

/// The version this build writes and the newest it reads.
pub const SCHEMA: u32 = 2;

const TABLE: TableDefinition<&str, u32> = TableDefinition::new("schema");
const KEY: &str = "version";

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the raft database was written by a newer shoal (schema {found}; this one reads up to \
         {SCHEMA}): run the newer version, or recover from another manager"
    )]
    Newer { found: u32 },
    #[error("reading the raft database's schema: {0}")]
    Db(String),
}

/// The database's version (1 when none is recorded); refused when newer than [`SCHEMA`].
pub fn check(db: &Database) -> Result<u32, SchemaError> {
    let db_err = |e: &dyn std::fmt::Display| SchemaError::Db(e.to_string());
    let txn = db.begin_read().map_err(|e| db_err(&e))?;
    let found = match txn.open_table(TABLE) {
        Ok(t) => t
            .get(KEY)
            .map_err(|e| db_err(&e))?
            .map(|v| v.value())
            .unwrap_or(1),
        Err(redb::TableError::TableDoesNotExist(_)) => 1,
        Err(e) => return Err(db_err(&e)),
    };
    if found > SCHEMA {
        return Err(SchemaError::Newer { found });
    }
    Ok(found)
}

/// Record that the database now holds version [`SCHEMA`] (once it has been opened by it).
pub fn mark(db: &Database) -> Result<(), SchemaError> {
    let db_err = |e: &dyn std::fmt::Display| SchemaError::Db(e.to_string());
    let txn = db.begin_write().map_err(|e| db_err(&e))?;
    {
        let mut t = txn.open_table(TABLE).map_err(|e| db_err(&e))?;
        t.insert(KEY, SCHEMA).map_err(|e| db_err(&e))?;
    }
    txn.commit().map_err(|e| db_err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unversioned_databases_are_version_one_and_newer_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("raft.redb")).unwrap();
        assert_eq!(check(&db).unwrap(), 1);
        mark(&db).unwrap();
        assert_eq!(check(&db).unwrap(), SCHEMA);

        let txn = db.begin_write().unwrap();
        txn.open_table(TABLE)
            .unwrap()
            .insert(KEY, SCHEMA + 1)
            .unwrap();
        txn.commit().unwrap();
        let e = check(&db).unwrap_err().to_string();
        assert!(e.contains("newer shoal"), "{e}");
    }
}
