//! A restore's users into RocksDB as SST files, ingested whole: no memtable inserts, no
//! flushes, and no cache churn for users the cache has no room for. A restore gives
//! each user once into an empty store, so a batch sorted by key is a valid SST file.

use std::path::{Path, PathBuf};

use rocksdb::{DB, IngestExternalFileOptions, Options, SstFileWriter};

use crate::model::Text;

/// Encoded bytes gathered before they go into a file: about a memtable's worth, so
/// that L0 gets as many files as flushes would have made.
const FILE_BYTES: usize = 64 << 20;

/// Restored users waiting for their SST file.
pub(super) struct BulkLoad {
    /// `<db path>.restore-`: files are numbered after it.
    prefix: PathBuf,
    users: Vec<(Text, Vec<u8>)>,
    bytes: usize,
    /// Bytes that make a file.
    file_bytes: usize,
    files: u64,
}

impl BulkLoad {
    pub(super) fn new(db_path: &Path) -> BulkLoad {
        BulkLoad::with_file_bytes(db_path, FILE_BYTES)
    }

    pub(super) fn with_file_bytes(db_path: &Path, file_bytes: usize) -> BulkLoad {
        let mut prefix = db_path.as_os_str().to_os_string();
        prefix.push(".restore-");
        BulkLoad {
            prefix: prefix.into(),
            users: Vec::new(),
            bytes: 0,
            file_bytes,
            files: 0,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Adds a user; true when enough are gathered for a file.
    pub(super) fn add(&mut self, user: Text, encoded: Vec<u8>) -> bool {
        self.bytes += user.len() + encoded.len();
        self.users.push((user, encoded));
        self.bytes >= self.file_bytes
    }

    /// Writes the gathered users to an SST file and moves it into `db`.
    pub(super) fn ingest(&mut self, db: &DB, opts: &Options) -> Result<(), rocksdb::Error> {
        let mut users = std::mem::take(&mut self.users);
        self.bytes = 0;
        if users.is_empty() {
            return Ok(());
        }
        // An SST file takes each key once, in order.
        super::rocks::in_key_order(&mut users);
        self.files += 1;
        let mut path = self.prefix.clone().into_os_string();
        path.push(format!("{}.sst", self.files));
        let path = PathBuf::from(path);
        let result = write_file(&path, &users, opts).and_then(|()| {
            let mut ingest = IngestExternalFileOptions::default();
            ingest.set_move_files(true);
            db.ingest_external_file_opts(&ingest, vec![&path])
        });
        let _ = std::fs::remove_file(&path);
        result
    }
}

fn write_file(
    path: &Path,
    users: &[(Text, Vec<u8>)],
    opts: &Options,
) -> Result<(), rocksdb::Error> {
    let mut writer = SstFileWriter::create(opts);
    writer.open(path)?;
    for (user, state) in users {
        writer.put(user.as_bytes(), state)?;
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> Text {
        s.into()
    }

    #[test]
    fn files_of_overlapping_keys_are_all_ingested_and_a_user_given_twice_keeps_the_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut opts = Options::default();
        opts.create_if_missing(true);
        let db = DB::open(&opts, &path).unwrap();
        let mut bulk = BulkLoad::with_file_bytes(&path, 4);
        // Keys out of order, each file's range overlapping the one before.
        for (u, v) in [
            ("m", "1"),
            ("b", "2"),
            ("z", "3"),
            ("c", "4"),
            ("a", "5"),
            ("y", "6"),
        ] {
            if bulk.add(user(u), v.as_bytes().to_vec()) {
                bulk.ingest(&db, &opts).unwrap();
            }
        }
        assert_eq!(bulk.files, 3);
        bulk.add(user("q"), b"7".to_vec());
        bulk.add(user("q"), b"8".to_vec());
        bulk.ingest(&db, &opts).unwrap();
        assert!(bulk.is_empty());
        let kept: Vec<(String, String)> = db
            .iterator(rocksdb::IteratorMode::Start)
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect();
        let want = [
            ("a", "5"),
            ("b", "2"),
            ("c", "4"),
            ("m", "1"),
            ("q", "8"),
            ("y", "6"),
            ("z", "3"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(kept, want);
        // The files were moved into the database, none is left beside it.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".restore-"))
            .collect();
        assert!(left.is_empty());
    }
}
