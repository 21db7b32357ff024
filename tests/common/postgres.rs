//! PostgreSQL fixtures for the end-to-end tests: a fresh database per test and one dev-provisioned CA served by `serve --config` replicas on it.
//!
//! The database is created through `E2EE_CA_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped at the end. Each replica gets its own
//! copy of the SoftHSM token directory (SoftHSM must not share a token directory between processes),
//! and all serve mTLS with the dev data directory's PKI, so `connect_as` reaches any of them as any
//! dev principal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::DevServer;

/// The bound the replicas put on one store operation; client deadlines are well above it.
pub const STORE_TIMEOUT_MS: u64 = 2000;

pub fn maintenance_url() -> String {
    std::env::var("E2EE_CA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL (is it running? see E2EE_CA_TEST_POSTGRES_URL)");
    tokio::spawn(connection);
    client
}

/// A fresh database, dropped (with FORCE) when this is dropped.
pub struct TestDatabase {
    /// The database name.
    pub name: String,
    /// Its URL (the maintenance URL's user, password, host and port).
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        TestDatabase::create_from(None).await
    }

    /// A fresh database that starts as a copy of `template` (CREATE DATABASE … TEMPLATE); nothing
    /// may be connected to the template, so its connections are terminated first.
    pub async fn copy_of(template: &TestDatabase) -> TestDatabase {
        TestDatabase::create_from(Some(template)).await
    }

    async fn create_from(template: Option<&TestDatabase>) -> TestDatabase {
        let name = format!("e2ee_ca_test_{}", hex::encode(rand::random::<[u8; 8]>()));
        let maintenance = connect(&maintenance_url()).await;
        match template {
            None => maintenance
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create database"),
            Some(template) => {
                // A backend of a killed client may linger for a moment: retry until it is gone.
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    template.terminate_connections(&maintenance).await;
                    let created = maintenance
                        .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {}", template.name))
                        .await;
                    match created {
                        Ok(()) => break,
                        Err(error) if Instant::now() < deadline => {
                            eprintln!("CREATE DATABASE … TEMPLATE {}: {error}; retrying", template.name);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(error) => panic!("cannot copy database {}: {error}", template.name),
                    }
                }
            }
        }
        // The maintenance URL with another database: user, password, host and port carry over.
        let url = match maintenance_url().rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("E2EE_CA_TEST_POSTGRES_URL must end in /DATABASE"),
        };
        TestDatabase { name, url }
    }

    /// A connection to the database.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// Kills every connection to the database except the caller's; returns how many.
    pub async fn terminate_connections(&self, client: &tokio_postgres::Client) -> i64 {
        client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .await
            .expect("pg_terminate_backend")
            .get(0)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                connect(&maintenance_url())
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
    }
}

/// One CA provisioned by dev mode (token, key, certificate), not running.
pub struct ProvisionedCa {
    directory: tempfile::TempDir,
    data_dir: PathBuf,
}

impl ProvisionedCa {
    /// Provisions the CA with dev mode (ECDSA P-256) and stops it.
    pub fn create() -> ProvisionedCa {
        let directory = tempfile::tempdir().expect("tempdir");
        let data_dir = DevServer::start(directory.path(), "ecdsa-p256").stop();
        ProvisionedCa { directory, data_dir }
    }

    /// Writes replica `index`'s directory: a private copy of the token and a serve config on `url`.
    pub fn replica_config(&self, index: usize, url: &str) -> PathBuf {
        let root = self.directory.path().join(format!("replica-{index}"));
        let token = hsm_sim::TokenDirectory::create(&root.join("softhsm")).expect("token directory");
        copy_tree(&self.data_dir.join("softhsm").join("tokens"), &token.tokens_path());
        let text = std::fs::read_to_string(self.data_dir.join("ca-service.toml")).expect("dev config");
        let mut config: toml::Table = toml::from_str(&text).expect("dev config parses");
        let hsm = config["hsm"].as_table_mut().expect("[hsm]");
        hsm.insert(
            "softhsm2_conf".to_owned(),
            token.conf_path().display().to_string().into(),
        );
        hsm.insert("pool_size".to_owned(), 2.into());
        let ca = config["ca"].as_table_mut().expect("[ca]");
        ca.insert(
            "certificate".to_owned(),
            self.data_dir.join("ca.pem").display().to_string().into(),
        );
        // The dev PKI stays in the dev data directory: every replica serves mTLS with the same
        // server certificate and knows the same principals.
        if let Some(tls) = config.get_mut("tls").and_then(toml::Value::as_table_mut) {
            self.absolute(tls, "certificate");
            self.absolute(tls, "key");
            for client_ca in tls
                .get_mut("client_ca")
                .and_then(toml::Value::as_array_mut)
                .into_iter()
                .flatten()
                .filter_map(toml::Value::as_table_mut)
            {
                self.absolute(client_ca, "file");
            }
        }
        // The tests count one audit entry per refusal: no per-minute summaries.
        if let Some(issuance) = config.get_mut("issuance").and_then(toml::Value::as_table_mut) {
            issuance.insert("refusal_entries_per_minute".to_owned(), 1_000_000.into());
        }
        let mut store = toml::Table::new();
        store.insert("url".to_owned(), url.into());
        store.insert("pool_size".to_owned(), 4.into());
        store.insert(
            "timeout_ms".to_owned(),
            i64::try_from(STORE_TIMEOUT_MS).expect("small").into(),
        );
        config.insert("store".to_owned(), store.into());
        let path = root.join("ca-service.toml");
        std::fs::write(&path, toml::to_string(&config).expect("serialise")).expect("write config");
        path
    }

    /// Rewrites the path `table[key]`, relative to the dev data directory, as an absolute path.
    fn absolute(&self, table: &mut toml::Table, key: &str) {
        if let Some(relative) = table.get(key).and_then(toml::Value::as_str) {
            let path = self.data_dir.join(relative).display().to_string();
            table.insert(key.to_owned(), path.into());
        }
    }

    /// Replica 0's config with `audit.sequence_wait_ms` set to `millis`.
    pub fn replica_config_with_sequence_wait(&self, url: &str, millis: i64) -> PathBuf {
        let path = self.replica_config(0, url);
        let mut config: toml::Table =
            toml::from_str(&std::fs::read_to_string(&path).expect("read config")).expect("config parses");
        config["audit"]
            .as_table_mut()
            .expect("[audit] from dev mode")
            .insert("sequence_wait_ms".to_owned(), millis.into());
        std::fs::write(&path, toml::to_string(&config).expect("serialise")).expect("write config");
        path
    }

    /// Starts `count` replicas on `url`.
    pub fn start_replicas(&self, count: usize, url: &str) -> Vec<DevServer> {
        (0..count)
            .map(|index| DevServer::start_with_config(&self.replica_config(index, url)))
            .collect()
    }
}

/// Copies the directory tree `from` into `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read token directory") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy token file");
        }
    }
}
