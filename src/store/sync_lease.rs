//! The sync lease: automatic syncs of one server list its tools one at a
//! time, across every daemon on the database, and lose no request.
//!
//! A daemon whose live session hears that a server's tools changed
//! *requests* a sync: it adds one to the server's `requested` counter, and
//! the number it gets back is its request. Then it *acquires* the lease: it
//! gets it when nobody holds it (or the holder let it expire) and its
//! request is not done yet, and remembers the `requested` of that moment,
//! the requests its listing will cover (they were all made before it
//! started). After the listing it *releases*: the requests it covered are
//! `done`, and if more were made meanwhile it keeps the lease and lists
//! again. A daemon that finds the lease held leaves its request to the
//! holder (who lists again for it) and only looks again when the lease
//! expires: if its request is still not done then, the holder died, and it
//! takes over.
//!
//! Each step is one short transaction on one pooled connection; none is
//! held while a server is listed. Times are the daemons' clocks (unix
//! milliseconds, as everywhere in the schema): a lease lasts far longer than
//! replicas' clocks differ.

use std::time::{Duration, SystemTime};

use diesel::{prelude::*, result::DatabaseErrorKind};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{
    Access, Store, StoreError,
    models::{from_ms, to_ms},
    schema::sync_leases,
    with_conn,
};

/// What [`Store::acquire_sync_lease`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAttempt {
    /// This daemon holds the lease: its listing covers the requests up to
    /// `generation`, which [`Store::release_sync_lease`] takes back.
    Acquired { generation: i64 },
    /// A finished sync covered the request already.
    Done,
    /// Another daemon holds the lease, until `until` unless it releases it
    /// first (its release syncs again for the request). Look again then.
    Held { until: SystemTime },
}

/// What [`Store::release_sync_lease`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRelease {
    /// The lease is free; no request is left undone.
    Released,
    /// Requests came while the holder listed: it keeps the lease (renewed)
    /// and lists again, covering those up to `generation`.
    Again { generation: i64 },
    /// The lease was no longer this daemon's: it had expired and another
    /// daemon took it over (or the server was closed). Nothing was written.
    Lost,
}

impl Store {
    /// Asks for an automatic sync of the server: answers the request's
    /// generation, for [`Store::acquire_sync_lease`]. A server that no
    /// longer exists is [`StoreError::ServerNotFound`].
    pub async fn request_sync(&self, server_id: &str) -> Result<i64, StoreError> {
        with_conn!(self, Access::Write, "request_sync", |conn| {
            diesel::insert_into(sync_leases::table)
                .values((
                    sync_leases::server_id.eq(server_id),
                    sync_leases::requested.eq(1),
                ))
                .on_conflict(sync_leases::server_id)
                .do_update()
                .set(sync_leases::requested.eq(sync_leases::requested + 1))
                .returning(sync_leases::requested)
                .get_result(conn)
                .await
                .map_err(|err| match err {
                    // The row points at its server: a closed one refuses it.
                    diesel::result::Error::DatabaseError(
                        DatabaseErrorKind::ForeignKeyViolation,
                        _,
                    ) => StoreError::ServerNotFound(server_id.to_owned()),
                    other => other.into(),
                })
        })
    }

    /// Takes the server's sync lease for `holder` (a daemon's id) for
    /// `ttl`, unless request `generation` is done already or another daemon
    /// holds the lease and has not let it expire. A lease `holder` holds
    /// already is taken again (renewed).
    pub async fn acquire_sync_lease(
        &self,
        server_id: &str,
        holder: &str,
        generation: i64,
        ttl: Duration,
    ) -> Result<LeaseAttempt, StoreError> {
        let now = to_ms(SystemTime::now());
        let until = to_ms(SystemTime::now() + ttl);
        with_conn!(self, Access::Write, "acquire_sync_lease", |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                let taken: Option<i64> = diesel::update(
                    sync_leases::table
                        .filter(sync_leases::server_id.eq(server_id))
                        .filter(sync_leases::done.lt(generation))
                        .filter(
                            sync_leases::holder
                                .is_null()
                                .or(sync_leases::holder.eq(holder))
                                .or(sync_leases::expires_at.le(now)),
                        ),
                )
                .set((
                    sync_leases::holder.eq(holder),
                    sync_leases::expires_at.eq(until),
                ))
                .returning(sync_leases::requested)
                .get_result(conn)
                .await
                .optional()?;
                if let Some(generation) = taken {
                    return Ok(LeaseAttempt::Acquired { generation });
                }
                let lease: Option<(Option<String>, i64, i64)> = sync_leases::table
                    .filter(sync_leases::server_id.eq(server_id))
                    .select((
                        sync_leases::holder,
                        sync_leases::expires_at,
                        sync_leases::done,
                    ))
                    .first(conn)
                    .await
                    .optional()?;
                match lease {
                    // Gone with its server (ON DELETE CASCADE).
                    None => Err(StoreError::ServerNotFound(server_id.to_owned())),
                    Some((_, _, done)) if done >= generation => Ok(LeaseAttempt::Done),
                    // Released (or expired) since the update looked: at once.
                    Some((None, _, _)) => Ok(LeaseAttempt::Held {
                        until: from_ms(now),
                    }),
                    Some((Some(_), expires_at, _)) => Ok(LeaseAttempt::Held {
                        until: from_ms(expires_at.max(now)),
                    }),
                }
            })
            .await
        })
    }

    /// Ends a listing `holder` started under the lease at `generation`:
    /// the requests up to it are done. If more came meanwhile the lease
    /// stays `holder`'s for another `ttl` and the caller lists again.
    pub async fn release_sync_lease(
        &self,
        server_id: &str,
        holder: &str,
        generation: i64,
        ttl: Duration,
    ) -> Result<LeaseRelease, StoreError> {
        let until = to_ms(SystemTime::now() + ttl);
        with_conn!(self, Access::Write, "release_sync_lease", |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                let lease = sync_leases::table
                    .filter(sync_leases::server_id.eq(server_id))
                    .filter(sync_leases::holder.eq(holder));
                // Written first: the row stays locked to the end of the
                // transaction, so no request slips between the look at
                // `requested` and the decision.
                let requested: Option<i64> = diesel::update(lease)
                    .set(sync_leases::done.eq(generation))
                    .returning(sync_leases::requested)
                    .get_result(conn)
                    .await
                    .optional()?;
                let Some(requested) = requested else {
                    return Ok(LeaseRelease::Lost);
                };
                if requested > generation {
                    diesel::update(lease)
                        .set(sync_leases::expires_at.eq(until))
                        .execute(conn)
                        .await?;
                    Ok(LeaseRelease::Again {
                        generation: requested,
                    })
                } else {
                    diesel::update(lease)
                        .set(sync_leases::holder.eq(None::<String>))
                        .execute(conn)
                        .await?;
                    Ok(LeaseRelease::Released)
                }
            })
            .await
        })
    }
}
