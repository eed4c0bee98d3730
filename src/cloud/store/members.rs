//! Membership of shared folders (DESIGN §10): invitations, members with their roles and
//! shares of the owner's quota, and the folder's membership epoch. Every change that takes
//! something away from a member (removal, leaving, a new role) bumps the epoch in the same
//! transaction, so access tickets issued before it are refused from then on; a removal
//! also unmaps the folder from the member's devices, so no peer ticket names it again.

use super::{
    Change, FolderColumns, Store, StoreError, entry_from, folder_from, folder_named, to_i64, to_u64,
};
use crate::proto::{Entry, Folder, Invitation, Member, Role};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

/// What accepting an invitation made.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    pub folder: Folder,
    pub role: Role,
}

fn role_from(row: &AnyRow, column: &str) -> Result<Role, StoreError> {
    Role::parse(&row.try_get::<String, _>(column)?).ok_or(StoreError::Corrupt("member role"))
}

fn max_bytes_from(row: &AnyRow) -> Result<Option<u64>, StoreError> {
    row.try_get::<Option<i64>, _>("max_bytes")?
        .map(|v| to_u64(v, "share of a quota"))
        .transpose()
}

fn opt_i64(v: Option<u64>) -> Result<Option<i64>, StoreError> {
    v.map(|v| to_i64(v, "share of a quota")).transpose()
}

fn invitation_from(row: &AnyRow) -> Result<Invitation, StoreError> {
    Ok(Invitation {
        folder: row.try_get("folder")?,
        folder_name: row.try_get("folder_name")?,
        owner: row.try_get("owner")?,
        user: row.try_get("user_name")?,
        role: role_from(row, "role")?,
        max_bytes: max_bytes_from(row)?,
        invited_ms: row.try_get("invited_ms")?,
    })
}

const INVITATION_COLUMNS: &str = "i.folder, f.name AS folder_name, f.owner, i.user_name, i.role, i.max_bytes, i.invited_ms FROM invitations i JOIN folders f ON f.id = i.folder";

/// Bytes of `folder`'s blocks that `user` stored.
pub(super) async fn stored_by(
    tx: &mut Transaction<'static, Any>,
    folder: &str,
    user: &str,
) -> Result<u64, StoreError> {
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(len), 0) AS BIGINT) AS n FROM blocks WHERE folder = $1 AND charged_to = $2",
    )
    .bind(folder)
    .bind(user)
    .fetch_one(&mut **tx)
    .await?;
    to_u64(row.try_get("n")?, "stored bytes")
}

async fn bump_epoch(tx: &mut Transaction<'static, Any>, folder: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE folders SET epoch = epoch + 1 WHERE id = $1")
        .bind(folder)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Joins a folder with `user`'s membership row: bind `user`, then the folder's id.
const MEMBERSHIP: &str = "SELECT f.*, m.role AS member_role FROM folders f
     LEFT JOIN members m ON m.folder = f.id AND m.user_name = $1
     WHERE f.id = $2";

/// The role `user` holds by a row of [`MEMBERSHIP`], whose folder has owner `owner`.
fn held_role(row: &AnyRow, owner: &str, user: &str) -> Result<Option<Role>, StoreError> {
    if owner == user {
        return Ok(Some(Role::Owner));
    }
    match row.try_get::<Option<String>, _>("member_role")? {
        Some(_) => role_from(row, "member_role").map(Some),
        None => Ok(None),
    }
}

impl Change {
    /// The role `user` holds on `folder`, read in this change's transaction: a write checks
    /// it here, so a removal or a new role committed since its request began is seen.
    pub async fn role(&mut self, folder: &str, user: &str) -> Result<Option<Role>, StoreError> {
        let row = sqlx::query(MEMBERSHIP)
            .bind(user)
            .bind(folder)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|row| held_role(&row, &row.try_get::<String, _>("owner")?, user))
            .transpose()
            .map(Option::flatten)
    }
}

/// The folder's columns in [`Store::caller_record`]'s row, renamed: the entry's have the
/// same names.
const CALLER_FOLDER_COLUMNS: FolderColumns = FolderColumns {
    id: "f_id",
    name: "f_name",
    owner: "f_owner",
    device_only: "f_device_only",
    created_ms: "f_created_ms",
    epoch: "f_epoch",
};

/// A folder and the role a user holds on it now (`None`: not a member).
pub type Membership = (Folder, Option<Role>);

/// What a request's caller is checked against: its device's user and whether the device is
/// revoked, and, for a folder's route, that folder's [`Membership`] (`None`: no such
/// folder), and the entry the route reads, if it asked for one (`None`: no such entry).
#[derive(Clone, Debug)]
pub struct CallerRecord {
    pub device_user: String,
    pub revoked: bool,
    pub membership: Option<Membership>,
    pub entry: Option<Entry>,
}

impl Store {
    /// The caller's device and, if `folder` is given, `user`'s membership of it and the
    /// folder's entry `entry`, in one query; `None` when there is no such device.
    pub async fn caller_record(
        &self,
        device: &str,
        folder: Option<&str>,
        user: &str,
        entry: Option<&str>,
    ) -> Result<Option<CallerRecord>, StoreError> {
        // The folder's columns are renamed (`CALLER_FOLDER_COLUMNS`).
        let row = sqlx::query(
            "SELECT d.user_name AS device_user, d.revoked AS device_revoked,
                    f.id AS f_id, f.name AS f_name, f.owner AS f_owner,
                    f.device_only AS f_device_only, f.created_ms AS f_created_ms,
                    f.epoch AS f_epoch, m.role AS member_role, e.*
               FROM devices d
               LEFT JOIN folders f ON f.id = $2
               LEFT JOIN members m ON m.folder = f.id AND m.user_name = $3
               LEFT JOIN entries e ON e.folder = f.id AND e.id = $4
              WHERE d.id = $1",
        )
        .bind(device)
        .bind(folder.unwrap_or_default())
        .bind(user)
        .bind(entry.unwrap_or_default())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let membership = match row.try_get::<Option<String>, _>(CALLER_FOLDER_COLUMNS.id)? {
            Some(_) => {
                let folder = folder_named(&row, &CALLER_FOLDER_COLUMNS)?;
                let role = held_role(&row, &folder.owner, user)?;
                Some((folder, role))
            }
            None => None,
        };
        let entry = match row.try_get::<Option<String>, _>("id")? {
            Some(_) => Some(entry_from(&row)?),
            None => None,
        };
        Ok(Some(CallerRecord {
            device_user: row.try_get("device_user")?,
            revoked: row.try_get::<i64, _>("device_revoked")? != 0,
            membership,
            entry,
        }))
    }

    /// The folder and the role `user` holds on it now (`None`: not a member), read
    /// together; `None` when there is no such folder.
    pub async fn membership(
        &self,
        folder: &str,
        user: &str,
    ) -> Result<Option<Membership>, StoreError> {
        let row = sqlx::query(MEMBERSHIP)
            .bind(user)
            .bind(folder)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let folder = folder_from(&row)?;
            let role = held_role(&row, &folder.owner, user)?;
            Ok((folder, role))
        })
        .transpose()
    }

    /// The folder's owner and members, the owner first, with what each stored in it.
    pub async fn members(&self, folder: &Folder) -> Result<Vec<Member>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.user_name, p.role, p.max_bytes,
                    (SELECT CAST(COALESCE(SUM(b.len), 0) AS BIGINT) FROM blocks b
                      WHERE b.folder = $1 AND b.charged_to = p.user_name) AS stored
               FROM (SELECT 0 AS rank, u.name AS user_name, 'owner' AS role, NULL AS max_bytes
                       FROM users u WHERE u.name = $2
                     UNION ALL
                     SELECT 1, m.user_name, m.role, m.max_bytes FROM members m
                      WHERE m.folder = $3) p
              ORDER BY p.rank, p.user_name",
        )
        .bind(&folder.id)
        .bind(&folder.owner)
        .bind(&folder.id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Member {
                    user: row.try_get("user_name")?,
                    role: role_from(row, "role")?,
                    max_bytes: max_bytes_from(row)?,
                    stored_bytes: to_u64(row.try_get("stored")?, "stored bytes")?,
                })
            })
            .collect()
    }

    /// The share of the owner's quota `user` may use in `folder` (`None`: no limit of its
    /// own, as for the owner and for anyone not a member).
    pub async fn share_of(&self, folder: &str, user: &str) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query("SELECT max_bytes FROM members WHERE folder = $1 AND user_name = $2")
            .bind(folder)
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => max_bytes_from(&row)?,
            None => None,
        })
    }

    /// Invites `user` (or changes a waiting invitation). The caller checked that the user
    /// exists and is neither the owner nor a member.
    pub async fn invite(
        &self,
        folder: &str,
        user: &str,
        role: Role,
        max_bytes: Option<u64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO invitations (folder, user_name, role, max_bytes, invited_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (folder, user_name) DO UPDATE SET role = excluded.role,
               max_bytes = excluded.max_bytes, invited_ms = excluded.invited_ms",
        )
        .bind(folder)
        .bind(user)
        .bind(role.as_str())
        .bind(opt_i64(max_bytes)?)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn invitation(
        &self,
        folder: &str,
        user: &str,
    ) -> Result<Option<Invitation>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {INVITATION_COLUMNS} WHERE i.folder = $1 AND i.user_name = $2"
        )))
        .bind(folder)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(invitation_from).transpose()
    }

    /// The invitations waiting for `user`, oldest first.
    pub async fn invitations_for(&self, user: &str) -> Result<Vec<Invitation>, StoreError> {
        self.invitations_where("i.user_name = $1 ORDER BY i.invited_ms, i.folder", user)
            .await
    }

    /// The invitations to `folder` that wait for an answer, oldest first.
    pub async fn invitations_to(&self, folder: &str) -> Result<Vec<Invitation>, StoreError> {
        self.invitations_where("i.folder = $1 ORDER BY i.invited_ms, i.user_name", folder)
            .await
    }

    /// The invitations a fixed condition with one parameter picks.
    async fn invitations_where(
        &self,
        condition: &'static str,
        value: &str,
    ) -> Result<Vec<Invitation>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {INVITATION_COLUMNS} WHERE {condition}"
        )))
        .bind(value)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(invitation_from).collect()
    }

    /// Drops an invitation (withdrawn or declined); false if there was none.
    pub async fn drop_invitation(&self, folder: &str, user: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM invitations WHERE folder = $1 AND user_name = $2")
            .bind(folder)
            .bind(user)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Makes the invitee a member with the invitation's role and share, in one transaction;
    /// `None` if no invitation waits.
    pub async fn accept(&self, folder: &str, user: &str) -> Result<Option<Accepted>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "DELETE FROM invitations WHERE folder = $1 AND user_name = $2 RETURNING role, max_bytes",
        )
        .bind(folder)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let role = role_from(&row, "role")?;
        sqlx::query(
            "INSERT INTO members (folder, user_name, role, max_bytes) VALUES ($1, $2, $3, $4)
             ON CONFLICT (folder, user_name) DO UPDATE SET role = excluded.role,
               max_bytes = excluded.max_bytes",
        )
        .bind(folder)
        .bind(user)
        .bind(role.as_str())
        .bind(row.try_get::<Option<i64>, _>("max_bytes")?)
        .execute(&mut *tx)
        .await?;
        let folder = sqlx::query("SELECT * FROM folders WHERE id = $1")
            .bind(folder)
            .fetch_one(&mut *tx)
            .await?;
        let folder = folder_from(&folder)?;
        tx.commit().await?;
        Ok(Some(Accepted { folder, role }))
    }

    /// Gives `user` a role and share on a folder, as a member from now on (replacing an
    /// earlier role, and any invitation). Bumps the epoch when it changes a member's role.
    pub async fn set_member(
        &self,
        folder: &str,
        user: &str,
        role: Role,
        max_bytes: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let before = sqlx::query("SELECT role FROM members WHERE folder = $1 AND user_name = $2")
            .bind(folder)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO members (folder, user_name, role, max_bytes) VALUES ($1, $2, $3, $4)
             ON CONFLICT (folder, user_name) DO UPDATE SET role = excluded.role,
               max_bytes = excluded.max_bytes",
        )
        .bind(folder)
        .bind(user)
        .bind(role.as_str())
        .bind(opt_i64(max_bytes)?)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM invitations WHERE folder = $1 AND user_name = $2")
            .bind(folder)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        if let Some(before) = before
            && role_from(&before, "role")? != role
        {
            bump_epoch(&mut tx, folder).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes a member (the owner removed them, or they left): their devices unmap the
    /// folder and the epoch moves on, in one transaction. False if `user` was no member.
    pub async fn remove_member(&self, folder: &str, user: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM members WHERE folder = $1 AND user_name = $2")
            .bind(folder)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        if gone.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "DELETE FROM mapped WHERE folder = $1
               AND device IN (SELECT id FROM devices WHERE user_name = $2)",
        )
        .bind(folder)
        .bind(user)
        .execute(&mut *tx)
        .await?;
        bump_epoch(&mut tx, folder).await?;
        tx.commit().await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::store::{BlockRecord, Charge, test_device};
    use crate::proto::BlockHash;

    async fn store_with_folder() -> (tempfile::TempDir, Store, Folder) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await;
        for u in ["ann", "bob"] {
            assert!(store.insert_user(u, "x", 1 << 30, 0).await.unwrap());
        }
        let f = Folder {
            id: "f".into(),
            name: "Docs".into(),
            owner: "ann".into(),
            device_only: false,
            created_ms: 0,
            epoch: 0,
        };
        assert!(store.insert_folder(&f).await.unwrap());
        (dir, store, f)
    }

    #[tokio::test]
    async fn the_caller_record_reads_the_device_and_the_paths_folder_together() {
        let (_d, store, f) = store_with_folder().await;
        store
            .insert_device(&test_device("ann-laptop", "ann"))
            .await
            .unwrap();
        store
            .insert_device(&test_device("bob-phone", "bob"))
            .await
            .unwrap();
        let record = |dev: &'static str, folder: Option<&'static str>, user: &'static str| {
            let store = &store;
            async move { store.caller_record(dev, folder, user, None).await.unwrap() }
        };

        assert!(
            record("nobody", Some("f"), "ann").await.is_none(),
            "no such device"
        );
        let ann = record("ann-laptop", Some("f"), "ann").await.unwrap();
        assert_eq!((ann.device_user.as_str(), ann.revoked), ("ann", false));
        assert_eq!(ann.membership, Some((f.clone(), Some(Role::Owner))));
        let bob = record("bob-phone", Some("f"), "bob").await.unwrap();
        assert_eq!(bob.membership, Some((f.clone(), None)), "not a member");
        store
            .invite("f", "bob", Role::Writer, None, 0)
            .await
            .unwrap();
        store.accept("f", "bob").await.unwrap();
        let bob = record("bob-phone", Some("f"), "bob").await.unwrap();
        assert_eq!(bob.membership.unwrap().1, Some(Role::Writer));
        assert_eq!(
            record("ann-laptop", Some("gone"), "ann")
                .await
                .unwrap()
                .membership,
            None,
            "no such folder"
        );
        assert_eq!(
            record("ann-laptop", None, "ann").await.unwrap().membership,
            None
        );

        store.revoke_device("bob", "bob-phone").await.unwrap();
        assert!(record("bob-phone", Some("f"), "bob").await.unwrap().revoked);
        assert_eq!(
            record("bob-phone", None, "ann").await.unwrap().device_user,
            "bob",
            "the device's own user, whoever the ticket names"
        );
    }

    #[tokio::test]
    async fn the_caller_record_carries_the_entry_the_route_reads() {
        let (_d, store, f) = store_with_folder().await;
        store
            .insert_device(&test_device("ann-laptop", "ann"))
            .await
            .unwrap();
        let e = Entry {
            id: "e".into(),
            folder: f.id.clone(),
            parent: None,
            name: "report.txt".into(),
            kind: crate::proto::EntryKind::File,
            mode: 0o644,
            size: 3,
            mtime_ns: 7,
            version: 1,
            deleted: false,
            manifest: vec![],
            target: None,
            author: "ann-laptop".into(),
            in_cloud: true,
            holders: vec!["ann-laptop".into()],
        };
        let mut change = store.begin_change().await.unwrap();
        change.save(&e).await.unwrap();
        change.commit().await.unwrap();
        let record = |folder: &'static str, entry: Option<&'static str>| {
            let store = &store;
            async move {
                store
                    .caller_record("ann-laptop", Some(folder), "ann", entry)
                    .await
                    .unwrap()
                    .unwrap()
            }
        };

        let both = record("f", Some("e")).await;
        assert_eq!(both.entry.as_ref(), Some(&e));
        assert_eq!(
            both.membership,
            Some((f, Some(Role::Owner))),
            "the folder's columns, not the entry's of the same names"
        );
        assert_eq!(record("f", Some("other")).await.entry, None);
        assert_eq!(record("f", None).await.entry, None, "not asked for");
        assert_eq!(
            record("gone", Some("e")).await.entry,
            None,
            "another folder's"
        );
    }

    async fn epoch(store: &Store) -> u64 {
        store.folder("f").await.unwrap().unwrap().epoch
    }

    #[tokio::test]
    async fn accepting_makes_a_member_and_spends_the_invitation() {
        let (_d, store, _) = store_with_folder().await;
        store
            .invite("f", "bob", Role::Reader, Some(10), 5)
            .await
            .unwrap();
        assert_eq!(store.membership("f", "bob").await.unwrap().unwrap().1, None);
        assert_eq!(store.invitations_for("bob").await.unwrap().len(), 1);
        let got = store.accept("f", "bob").await.unwrap().unwrap();
        assert_eq!(got.role, Role::Reader);
        assert_eq!(
            store.membership("f", "bob").await.unwrap().unwrap().1,
            Some(Role::Reader)
        );
        assert_eq!(store.share_of("f", "bob").await.unwrap(), Some(10));
        assert!(store.invitations_for("bob").await.unwrap().is_empty());
        assert_eq!(store.accept("f", "bob").await.unwrap(), None);
        assert_eq!(epoch(&store).await, 0, "a new member takes nothing away");
    }

    #[tokio::test]
    async fn removal_and_a_new_role_move_the_epoch_and_removal_unmaps() {
        let (_d, store, _) = store_with_folder().await;
        store
            .set_member("f", "bob", Role::Writer, None)
            .await
            .unwrap();
        assert_eq!(epoch(&store).await, 0);
        store
            .set_member("f", "bob", Role::Reader, None)
            .await
            .unwrap();
        assert_eq!(epoch(&store).await, 1);
        let dev = crate::proto::Device {
            id: "b1".into(),
            user: "bob".into(),
            name: "b".into(),
            public_key: String::new(),
            created_ms: 0,
            last_seen_ms: 0,
            revoked: false,
            addrs: Vec::new(),
            folders: Vec::new(),
        };
        store.insert_device(&dev).await.unwrap();
        store.set_mapped("b1", "f", true).await.unwrap();
        let mut c = store.begin_change().await.unwrap();
        assert_eq!(c.role("f", "bob").await.unwrap(), Some(Role::Reader));
        assert_eq!(c.role("f", "ann").await.unwrap(), Some(Role::Owner));
        drop(c);
        assert!(store.remove_member("f", "bob").await.unwrap());
        let mut c = store.begin_change().await.unwrap();
        assert_eq!(
            c.role("f", "bob").await.unwrap(),
            None,
            "a write sees the removal"
        );
        drop(c);
        assert_eq!(epoch(&store).await, 2);
        assert!(store.devices_mapping("f").await.unwrap().is_empty());
        assert!(!store.remove_member("f", "bob").await.unwrap());
        assert_eq!(epoch(&store).await, 2);
    }

    #[tokio::test]
    async fn a_members_blocks_stop_at_their_share_and_count_for_the_owner() {
        let (_d, store, f) = store_with_folder().await;
        store
            .set_member("f", "bob", Role::Writer, Some(25))
            .await
            .unwrap();
        let charge = Charge {
            owner: &f.owner,
            member: "bob",
            share: store.share_of("f", "bob").await.unwrap(),
        };
        let h = |i: u8| BlockHash::of(&[i]);
        for i in 0..2 {
            let got = store.record_block("f", &h(i), 10, &charge).await.unwrap();
            assert_eq!(got, BlockRecord::Stored);
        }
        let got = store.record_block("f", &h(2), 10, &charge).await.unwrap();
        assert_eq!(got, BlockRecord::OverShare);
        assert!(!store.has_block("f", &h(2)).await.unwrap());
        assert_eq!(store.usage("ann").await.unwrap().unwrap().stored, 20);
        assert_eq!(store.usage("bob").await.unwrap().unwrap().stored, 0);
        let members = store.members(&f).await.unwrap();
        let bob = members.iter().find(|m| m.user == "bob").unwrap();
        assert_eq!((bob.stored_bytes, bob.max_bytes), (20, Some(25)));
    }
}
