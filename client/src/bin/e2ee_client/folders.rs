//! The folder commands of `e2ee-client` (create, mkdir, add, share, unshare, list, get) over the storage directory,
//! with a byte counter on stderr for large files.

use std::fs::File;
use std::io::Read;

use anyhow::Context;
use e2ee_client::pins::PinOutcome;
use e2ee_client::protocol::folder::{Folder, FolderPath, FolderStorage, SignedMetadata, StoredMetadata};
use e2ee_client::protocol::metadata::Recipient;
use e2ee_client::storage::LocalDirectory;
use e2ee_client::transport::CaTransport;

use crate::device::Device;
use crate::{CaAddress, Command};

/// Files at least this large get a byte counter on stderr.
const PROGRESS_THRESHOLD: u64 = 8 * 1024 * 1024;

pub(crate) async fn folder_operation(
    ca: &CaAddress,
    device: &mut Device,
    storage: &ProgressStorage,
    command: &Command,
) -> anyhow::Result<()> {
    match command {
        Command::Create { folder } => {
            if storage.0.read_metadata(folder, &FolderPath::root()).is_ok() {
                anyhow::bail!("a folder named {folder:?} already exists");
            }
            let mut created = Folder::create(folder, &device.account)?;
            device.save(storage, &mut created)?;
            println!("created encrypted folder {folder:?}");
        }
        Command::Mkdir { folder, path } => {
            let mut opened = device.open(storage, folder)?;
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            let parent = opened.resolve_folder(parent)?;
            opened.add_subfolder(&parent, name)?;
            device.save(storage, &mut opened)?;
            println!("created {folder}/{path}");
        }
        Command::Add { folder, to, files } => {
            let mut opened = device.open(storage, folder)?;
            let parent = opened.resolve_folder(to)?;
            for path in files {
                let name = path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .with_context(|| format!("{} has no usable file name", path.display()))?;
                let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
                let length = file.metadata()?.len();
                let reader = Progress::new(file, name, length);
                opened.add_file(storage, &parent, name, mimetype(name), reader)?;
                println!("added {name} ({length} bytes)");
            }
            device.save(storage, &mut opened)?;
        }
        Command::Share { folder, user } => {
            let mut opened = device.open(storage, folder)?;
            let mut transport = ca.connect().await?;
            let certificate_pem = transport
                .certificate_of(user)
                .await?
                .with_context(|| format!("the CA knows no certificate for {user:?}; they must enroll first"))?;
            match device
                .trust
                .check(user, &certificate_pem)
                .with_context(|| format!("refusing to share with {user:?}"))?
            {
                PinOutcome::NewlyPinned => println!("pinned the key of {user:?} (first use)"),
                PinOutcome::Matches => println!("the key of {user:?} matches the pin"),
            }
            opened.share(Recipient {
                user_id: user.clone(),
                certificate_pem,
            })?;
            device.save(storage, &mut opened)?;
            println!("shared {folder:?} with {user:?}; the folder key was rotated");
        }
        Command::Unshare { folder, user } => {
            let mut opened = device.open(storage, folder)?;
            opened.unshare(user)?;
            device.save(storage, &mut opened)?;
            println!("removed {user:?} from {folder:?}; the folder key was rotated (files are not re-encrypted)");
        }
        Command::List { folder: Some(folder) } => {
            let opened = device.open(storage, folder)?;
            println!(
                "{folder}/  (users: {})",
                opened.user_ids().collect::<Vec<_>>().join(", ")
            );
            print_tree(&opened, &FolderPath::root(), 1)?;
        }
        Command::Get { folder, path, out } => {
            let opened = device.open(storage, folder)?;
            let (parent, id) = opened.resolve_file(path)?;
            storage.1.replace(Some(path.clone()));
            let length = opened
                .decrypt_file_to(storage, &parent, &id, out)
                .with_context(|| format!("cannot decrypt {path}"))?;
            println!("decrypted {path} ({length} bytes) to {}", out.display());
        }
        other => anyhow::bail!("not a folder command: {other:?}"),
    }
    Ok(())
}

fn print_tree(folder: &Folder, path: &FolderPath, depth: usize) -> anyhow::Result<()> {
    let listing = folder.list(path)?;
    let indent = "  ".repeat(depth);
    for (name, child) in &listing.folders {
        println!("{indent}{name}/");
        print_tree(folder, child, depth + 1)?;
    }
    for (name, id, mimetype) in &listing.files {
        println!("{indent}{name}  [{mimetype}, {id}]");
    }
    Ok(())
}

/// A guess from the extension; Nextcloud falls back to `application/octet-stream` too.
fn mimetype(name: &str) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, extension)| extension.to_ascii_lowercase());
    match extension.as_deref() {
        Some("txt" | "md") => "text/plain",
        Some("pdf") => "application/pdf",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// `LocalDirectory` whose blob reads report progress (decryption of large files), labelled with the
/// cleartext name being decrypted when one is set (the storage itself only knows blob ids).
pub(crate) struct ProgressStorage(pub(crate) LocalDirectory, pub(crate) std::cell::RefCell<Option<String>>);

impl FolderStorage for ProgressStorage {
    type BlobWriter = File;
    type BlobReader = Progress<File>;

    fn read_metadata(&self, top_level: &str, path: &FolderPath) -> std::io::Result<StoredMetadata> {
        self.0.read_metadata(top_level, path)
    }

    fn write_metadata(&self, top_level: &str, path: &FolderPath, metadata: &SignedMetadata) -> std::io::Result<()> {
        self.0.write_metadata(top_level, path, metadata)
    }

    fn create_blob(&self, top_level: &str, path: &FolderPath, file_id: &str) -> std::io::Result<File> {
        self.0.create_blob(top_level, path, file_id)
    }

    fn open_blob(&self, top_level: &str, path: &FolderPath, file_id: &str) -> std::io::Result<Progress<File>> {
        let file = self.0.open_blob(top_level, path, file_id)?;
        let length = file.metadata()?.len();
        let label = self.1.borrow().clone().unwrap_or_else(|| file_id.to_owned());
        Ok(Progress::new(file, &label, length))
    }
}

/// A reader that prints `label: N / M MiB` on stderr as it goes, for inputs of at least `PROGRESS_THRESHOLD`.
pub(crate) struct Progress<R> {
    inner: R,
    label: String,
    total: u64,
    done: u64,
    reported: u64,
    finished: bool,
}

impl<R> Progress<R> {
    fn new(inner: R, label: &str, total: u64) -> Progress<R> {
        Progress {
            inner,
            label: label.to_owned(),
            total,
            done: 0,
            reported: 0,
            finished: false,
        }
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.done += read as u64;
        if self.total >= PROGRESS_THRESHOLD && !self.finished {
            let mebibytes = |bytes: u64| bytes / (1024 * 1024);
            if read == 0 || self.done - self.reported >= 4 * 1024 * 1024 {
                self.reported = self.done;
                eprint!(
                    "\r{}: {} / {} MiB",
                    self.label,
                    mebibytes(self.done),
                    mebibytes(self.total)
                );
                if read == 0 {
                    self.finished = true;
                    eprintln!();
                }
            }
        }
        Ok(read)
    }
}
