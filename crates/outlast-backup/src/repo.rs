//! A configured repository opened through rustic: the url mapped to a rustic backend,
//! created (restic format, version 2) the first time a snapshot goes to it.

use std::collections::BTreeMap;

use outlast_core::config::BackupRepo;
use rustic_backend::BackendOptions;
use rustic_core::{
    ConfigOptions, Credentials, KeyOptions, OpenStatus, ProgressBars, Repository, RepositoryOptions,
};

use crate::Error;

/// An opened repository.
pub type Open = Repository<OpenStatus>;

/// The rustic location and options for a configured url.
///
/// `file:///dir` is a local directory; `s3://bucket/prefix`, `gs://bucket/prefix` and
/// `az://container/prefix` go through OpenDAL's services with the repository's `options`
/// (`endpoint`, `region`, `access_key_id`, ...); `rest:URL` is restic's REST server.
pub fn backend(url: &str, options: &BTreeMap<String, String>) -> Result<BackendOptions, Error> {
    let bad = |why: &str| Error::Url {
        url: url.to_string(),
        why: why.to_string(),
    };
    let mut opts = options.clone();
    // object_store's switch for plain http; OpenDAL takes the scheme from the endpoint.
    opts.remove("allow_http");
    let location = if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(bad("a file:// url needs an absolute path"));
        }
        format!("local:{path}")
    } else if let Some(rest) = url.strip_prefix("rest:") {
        format!("rest:{rest}")
    } else {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (service, bucket_key) = match scheme {
            "s3" => ("s3", "bucket"),
            "gs" => ("gcs", "bucket"),
            "az" => ("azblob", "container"),
            _ => return Err(bad("the scheme is not one of file, s3, gs, az, rest")),
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        opts.insert(bucket_key.to_string(), bucket.to_string());
        opts.insert("root".to_string(), format!("/{}", prefix.trim_matches('/')));
        if service == "s3" {
            opts.entry("region".to_string())
                .or_insert_with(|| "us-east-1".to_string());
        }
        format!("opendal:{service}")
    };
    Ok(BackendOptions::default().repository(location).options(opts))
}

/// The repository, not yet opened. No local cache: every read goes to the repository, so
/// what a verify reads is what is stored.
fn unopened(repo: &BackupRepo, pb: impl ProgressBars) -> Result<Repository<()>, Error> {
    let e = |source| Error::repo(&repo.url, source);
    let backends = backend(&repo.url, &repo.options)?
        .to_backends()
        .map_err(e)?;
    let opts = RepositoryOptions::default().no_cache(true);
    Repository::new_with_progress(&opts, &backends, pb).map_err(e)
}

/// Opens the repository, creating it when nothing is there yet.
pub fn open_or_init(repo: &BackupRepo, pb: impl ProgressBars) -> Result<Open, Error> {
    let e = |source| Error::repo(&repo.url, source);
    let r = unopened(repo, pb)?;
    let credentials = Credentials::password(&repo.password);
    if r.config_id().map_err(e)?.is_none() {
        tracing::info!(url = %repo.url, "creating the repository (restic format, version 2)");
        return r
            .init(
                &credentials,
                &KeyOptions::default(),
                &ConfigOptions::default(),
            )
            .map_err(e);
    }
    r.open(&credentials).map_err(e)
}

/// Opens an existing repository; a missing one is an error.
pub fn open(repo: &BackupRepo, pb: impl ProgressBars) -> Result<Open, Error> {
    let e = |source| Error::repo(&repo.url, source);
    let r = unopened(repo, pb)?;
    if r.config_id().map_err(e)?.is_none() {
        return Err(Error::Empty {
            url: repo.url.clone(),
        });
    }
    r.open(&Credentials::password(&repo.password)).map_err(e)
}

/// Opens a repository another site creates: waits (up to `limit`) while nothing is there
/// yet. Two sites creating one repository at once would each write their own key and
/// config; only one site ever creates it. Blocking, like all of this crate: run it off the
/// async runtime.
#[allow(clippy::disallowed_methods)] // a blocking thread's wait, not a runtime worker's
pub fn open_when_created(
    repo: &BackupRepo,
    pb: impl ProgressBars + Clone,
    limit: std::time::Duration,
) -> Result<Open, Error> {
    let start = outlast_core::clock::now();
    loop {
        match open(repo, pb.clone()) {
            Err(Error::Empty { .. }) if start.elapsed() < limit => {
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_map_to_rustic_backends() {
        let mut o = BTreeMap::new();
        o.insert("endpoint".to_string(), "http://127.0.0.1:9000".to_string());
        o.insert("allow_http".to_string(), "true".to_string());
        let b = backend("s3://backups-west/orders/x", &o).expect("s3");
        assert_eq!(b.repository.as_deref(), Some("opendal:s3"));
        assert_eq!(
            b.options.get("bucket").map(String::as_str),
            Some("backups-west")
        );
        assert_eq!(b.options.get("root").map(String::as_str), Some("/orders/x"));
        assert_eq!(
            b.options.get("region").map(String::as_str),
            Some("us-east-1")
        );
        assert!(!b.options.contains_key("allow_http"));
        let b = backend("file:///var/backups/r", &BTreeMap::new()).expect("file");
        assert_eq!(b.repository.as_deref(), Some("local:/var/backups/r"));
        let b = backend("az://c/p", &BTreeMap::new()).expect("az");
        assert_eq!(b.options.get("container").map(String::as_str), Some("c"));
        assert!(backend("file://relative", &BTreeMap::new()).is_err());
        assert!(backend("ftp://x/y", &BTreeMap::new()).is_err());
        assert!(backend("s3:///y", &BTreeMap::new()).is_err());
    }
}
