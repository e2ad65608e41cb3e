//! The `hpktainer-base` image as an OCI image archive, written without Docker.
//!
//! An `oci-archive` is a tar of an OCI image layout:
//!
//! ```text
//! oci-layout                  {"imageLayoutVersion": "1.0.0"}
//! index.json                  one manifest, tagged with the version
//! blobs/sha256/<manifest>     the config and the one layer, by digest
//! blobs/sha256/<config>       architecture, entrypoint, environment, diff_id
//! blobs/sha256/<layer>        gzip of a tar holding usr/local/bin/hpk-net-daemon
//! ```
//!
//! Apptainer runs such a file directly (`apptainer run oci-archive:PATH`),
//! skopeo and podman read it. Every timestamp is fixed (SOURCE_DATE_EPOCH, or
//! the epoch), the gzip header carries no time or name, and the JSON is
//! written in one fixed key order, so the same binary always gives the same archive, byte for byte.
//! The image is what docker/hpktainer-base/Dockerfile builds: the same file,
//! entrypoint, environment and labels.

use std::io::Write;

use anyhow::{Context, Result};
use flate2::{Compression, GzBuilder};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::tar::TarBuilder;

/// Where the relay client lives in the image.
pub const DAEMON_PATH: &str = "usr/local/bin/hpk-net-daemon";

/// The image's entrypoint: the client configures tap0 from the `HPK_*`
/// variables hpktainer passes, then runs what follows `--`, or relays until
/// SIGTERM when nothing does.
pub const ENTRYPOINT: &[&str] = &["/usr/local/bin/hpk-net-daemon", "client"];

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What the image is.
pub struct BaseImage<'a> {
    /// The static `hpk-net-daemon` for `arch`.
    pub daemon: &'a [u8],
    /// OCI architecture name: `amd64` or `arm64`.
    pub arch: &'a str,
    /// The release version, also the image's tag.
    pub version: &'a str,
    /// Seconds since the epoch for every timestamp.
    pub mtime: u64,
}

/// The archive's bytes, and the digest of its manifest (what identifies the image).
pub struct Archive {
    pub bytes: Vec<u8>,
    pub manifest_digest: String,
}

/// Writes the whole archive in memory (the binary is a few MiB).
pub fn base_archive(image: &BaseImage) -> Result<Archive> {
    let layer_tar = layer(image)?;
    let diff_id = digest(&layer_tar);
    let layer_gz = gzip(&layer_tar)?;
    let config = to_json(&config(image, &diff_id))?;
    let manifest = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, &config),
        "layers": [descriptor(MEDIA_LAYER, &layer_gz)],
        "annotations": annotations(image),
    }))?;
    let manifest_digest = digest(&manifest);

    let mut index_entry = descriptor(MEDIA_MANIFEST, &manifest);
    index_entry["platform"] = json!({"architecture": image.arch, "os": "linux"});
    index_entry["annotations"] = json!({"org.opencontainers.image.ref.name": image.version});
    let index = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [index_entry],
    }))?;

    let mut tar = TarBuilder::new(image.mtime);
    tar.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tar.file("index.json", 0o644, &index)?;
    tar.dir("blobs", 0o755)?;
    tar.dir("blobs/sha256", 0o755)?;
    for blob in [&manifest, &config, &layer_gz] {
        tar.file(&blob_path(blob), 0o644, blob)?;
    }
    Ok(Archive {
        bytes: tar.finish(),
        manifest_digest,
    })
}

/// The one layer: the static client at [`DAEMON_PATH`] and its directories.
fn layer(image: &BaseImage) -> Result<Vec<u8>> {
    let mut tar = TarBuilder::new(image.mtime);
    for dir in ["usr", "usr/local", "usr/local/bin"] {
        tar.dir(dir, 0o755)?;
    }
    tar.file(DAEMON_PATH, 0o755, image.daemon)?;
    Ok(tar.finish())
}

fn config(image: &BaseImage, diff_id: &str) -> Value {
    json!({
        "architecture": image.arch,
        "os": "linux",
        "config": {
            "Entrypoint": ENTRYPOINT,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "Labels": annotations(image),
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "cargo xtask images (hpktainer-base, written without Docker)"}],
    })
}

/// The labels the Dockerfile sets too.
fn annotations(image: &BaseImage) -> Value {
    json!({
        "org.opencontainers.image.title": "hpktainer-base",
        "org.opencontainers.image.description":
            "hpk-net-daemon's relay client as entrypoint: tap0 from HPK_IP, HPK_GATEWAY_IP, HPK_SOCKET_PATH, HPK_MTU",
        "org.opencontainers.image.version": image.version,
        "org.opencontainers.image.licenses": "Apache-2.0",
    })
}

fn descriptor(media_type: &str, blob: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest(blob), "size": blob.len()})
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn blob_path(blob: &[u8]) -> String {
    digest(blob).replace("sha256:", "blobs/sha256/")
}

/// gzip with no name and mtime 0 in its header, so it depends on `bytes` alone.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::best());
    encoder.write_all(bytes).context("gzip the layer")?;
    encoder.finish().context("gzip the layer")
}

/// Compact JSON, its keys in a fixed order (serde_json's map), so it is stable.
fn to_json(value: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(value).context("serialise image JSON")
}
