//! Sharing a folder between people over the REST API: invitations, roles, removal that takes
//! effect at once, and members' shares of the owner's quota.

use super::*;
use meshfs::proto::{Invitation, Member, MemberUpdate, NewInvitation};
use std::collections::HashMap;

/// Who calls, in the order a matrix tries them (the owner last, so what it may change
/// does not change what the others are refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Who {
    Stranger,
    Former,
    Reader,
    Writer,
    Owner,
}

const EVERYONE: [Who; 5] = [
    Who::Stranger,
    Who::Former,
    Who::Reader,
    Who::Writer,
    Who::Owner,
];

/// ann's folder Docs with bob as writer, carol and hal as readers, dave removed (his ticket
/// from before is kept), erin a stranger, and an invitation waiting for gus.
struct Household {
    env: Env,
    folder: String,
    devs: HashMap<Who, Dev>,
    /// Each caller's access ticket for the folder: current for members, the one from
    /// before the removal for dave, the identity ticket for erin.
    tickets: HashMap<Who, String>,
    gus: Dev,
    hal: Dev,
}

impl Env {
    async fn invite(&self, owner: &str, folder: &str, user: &str, role: Role) -> StatusCode {
        self.invite_with(owner, folder, user, role, None).await
    }

    async fn invite_with(
        &self,
        owner: &str,
        folder: &str,
        user: &str,
        role: Role,
        max_bytes: Option<u64>,
    ) -> StatusCode {
        let body = NewInvitation {
            user: user.into(),
            role,
            max_bytes,
        };
        let path = format!("/folders/{folder}/invitations");
        let res = self.req(Method::POST, &path, Some(owner)).json(&body);
        res.send().await.unwrap().status()
    }

    /// `dev` accepts the invitation to `folder`; the grant it gets.
    async fn accept(&self, dev: &Dev, folder: &str) -> FolderGrant {
        let path = format!("/folders/{folder}/invitations/{}/accept", dev.user);
        let res = self.req(Method::POST, &path, Some(&dev.identity));
        let res = res.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    /// `dev`'s current access ticket for `folder`, from its folder listing.
    async fn listed_ticket(&self, dev: &Dev, folder: &str) -> Option<FolderGrant> {
        let path = format!("/users/{}/folders", dev.user);
        let res = self.req(Method::GET, &path, Some(&dev.identity));
        let grants: Vec<FolderGrant> = res.send().await.unwrap().json().await.unwrap();
        grants.into_iter().find(|g| g.folder.id == folder)
    }

    async fn remove(&self, ticket: &str, folder: &str, user: &str) -> StatusCode {
        let path = format!("/folders/{folder}/members/{user}");
        let res = self.req(Method::DELETE, &path, Some(ticket));
        res.send().await.unwrap().status()
    }

    async fn members(&self, ticket: &str, folder: &str) -> Vec<Member> {
        let path = format!("/folders/{folder}/members");
        let res = self
            .req(Method::GET, &path, Some(ticket))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    async fn add_users(&self, users: &[&str]) {
        for u in users {
            cloud::add_user(&self.engines, u, &format!("{u}-password"))
                .await
                .unwrap();
        }
    }
}

async fn household() -> Household {
    let env = env().await;
    env.add_users(&["carol", "dave", "erin", "gus", "hal"])
        .await;
    let ann = env.login("ann").await;
    let docs = env.new_folder(&ann, "Docs", false).await;
    let f = docs.folder.id.clone();
    let owner = docs.ticket.ticket.clone();
    let mut devs = HashMap::new();
    for (who, user, role) in [
        (Who::Writer, "bob", Role::Writer),
        (Who::Reader, "carol", Role::Reader),
        (Who::Former, "dave", Role::Writer),
    ] {
        let dev = env.login(user).await;
        assert_eq!(
            env.invite(&owner, &f, user, role).await,
            StatusCode::CREATED
        );
        env.accept(&dev, &f).await;
        devs.insert(who, dev);
    }
    let hal = env.login("hal").await;
    assert_eq!(
        env.invite(&owner, &f, "hal", Role::Reader).await,
        StatusCode::CREATED
    );
    env.accept(&hal, &f).await;
    let gus = env.login("gus").await;
    assert_eq!(
        env.invite(&owner, &f, "gus", Role::Reader).await,
        StatusCode::CREATED
    );
    let dave_ticket = env
        .listed_ticket(&devs[&Who::Former], &f)
        .await
        .unwrap()
        .ticket
        .ticket;
    assert_eq!(env.remove(&owner, &f, "dave").await, StatusCode::NO_CONTENT);
    devs.insert(Who::Stranger, env.login("erin").await);
    devs.insert(Who::Owner, ann);
    let mut h = Household {
        env,
        folder: f,
        devs,
        tickets: HashMap::new(),
        gus,
        hal,
    };
    h.tickets.insert(Who::Former, dave_ticket);
    h.renew().await;
    h
}

impl Household {
    /// Fresh tickets for the members (after a change of the folder's membership epoch).
    async fn renew(&mut self) {
        for who in [Who::Reader, Who::Writer, Who::Owner] {
            let g = self.env.listed_ticket(&self.devs[&who], &self.folder).await;
            self.tickets.insert(who, g.unwrap().ticket.ticket);
        }
        let erin = self.devs[&Who::Stranger].identity.clone();
        self.tickets.insert(Who::Stranger, erin);
    }
}

/// What a route is called with.
#[derive(Clone, Copy)]
enum Ticket {
    /// The caller's access ticket for the folder (identity for the stranger).
    Access,
    /// The caller's identity ticket.
    Identity,
}

struct Case {
    method: Method,
    path: String,
    body: Option<serde_json::Value>,
    ticket: Ticket,
    /// Who gets a success; everyone else must get 403.
    allowed: &'static [Who],
}

/// Every new route (and the folder routes whose rights now follow the current role), for
/// every kind of caller: those allowed succeed, everyone else gets 403 and nothing changes.
#[tokio::test]
async fn every_route_refuses_every_role_that_may_not_use_it() {
    let mut h = household().await;
    let f = h.folder.clone();
    let block = b"a block for the matrix".as_slice();
    let hash = BlockHash::of(block).to_hex();
    let members: &[Who] = &[Who::Reader, Who::Writer, Who::Owner];
    let owner: &[Who] = &[Who::Owner];
    let writers: &[Who] = &[Who::Writer, Who::Owner];
    let case = |method: Method, path: String, ticket, allowed| Case {
        method,
        path,
        body: None,
        ticket,
        allowed,
    };
    let cases = [
        case(
            Method::GET,
            format!("/folders/{f}/members"),
            Ticket::Access,
            members,
        ),
        case(
            Method::GET,
            format!("/folders/{f}/devices"),
            Ticket::Access,
            members,
        ),
        case(
            Method::GET,
            format!("/folders/{f}/entries"),
            Ticket::Access,
            members,
        ),
        case(
            Method::GET,
            format!("/folders/{f}/changes"),
            Ticket::Access,
            members,
        ),
        case(
            Method::GET,
            format!("/folders/{f}/invitations"),
            Ticket::Access,
            owner,
        ),
        case(
            Method::GET,
            format!("/folders/{f}/invitations/gus"),
            Ticket::Access,
            owner,
        ),
        case(
            Method::GET,
            format!("/folders/{f}/invitations/gus"),
            Ticket::Identity,
            &[],
        ),
        case(
            Method::GET,
            "/users/gus/invitations".into(),
            Ticket::Identity,
            &[],
        ),
        case(
            Method::GET,
            "/users/gus/invitations".into(),
            Ticket::Access,
            &[],
        ),
        case(
            Method::GET,
            "/users/ann/devices".into(),
            Ticket::Identity,
            owner,
        ),
        Case {
            body: Some(serde_json::json!({"user": "gus", "role": "writer"})),
            ..case(
                Method::POST,
                format!("/folders/{f}/invitations"),
                Ticket::Access,
                owner,
            )
        },
        Case {
            body: Some(serde_json::json!({"role": "reader", "max_bytes": 1000000})),
            ..case(
                Method::PUT,
                format!("/folders/{f}/members/hal"),
                Ticket::Access,
                owner,
            )
        },
        Case {
            body: Some(serde_json::json!({"device_only": false})),
            ..case(
                Method::PATCH,
                format!("/folders/{f}"),
                Ticket::Access,
                owner,
            )
        },
        Case {
            body: Some(serde_json::json!({"hashes": [hash]})),
            ..case(
                Method::POST,
                format!("/folders/{f}/blocks"),
                Ticket::Access,
                members,
            )
        },
        case(
            Method::PUT,
            format!("/folders/{f}/blocks/{hash}"),
            Ticket::Access,
            writers,
        ),
        case(
            Method::POST,
            format!("/folders/{f}/invitations/gus/accept"),
            Ticket::Identity,
            &[],
        ),
        case(
            Method::DELETE,
            format!("/folders/{f}/invitations/gus"),
            Ticket::Identity,
            &[],
        ),
        case(
            Method::DELETE,
            format!("/folders/{f}/invitations/gus"),
            Ticket::Access,
            owner,
        ),
        case(
            Method::DELETE,
            format!("/folders/{f}/members/hal"),
            Ticket::Access,
            owner,
        ),
    ];
    for c in &cases {
        for who in EVERYONE {
            let ticket = match c.ticket {
                Ticket::Access => h.tickets[&who].clone(),
                Ticket::Identity => h.devs[&who].identity.clone(),
            };
            let mut req = h.env.req(c.method.clone(), &c.path, Some(&ticket));
            req = match (&c.body, c.method.clone()) {
                (Some(b), _) => req.json(b),
                (None, Method::PUT) => req.body(block.to_vec()),
                (None, _) => req,
            };
            let res = req.send().await.unwrap();
            let status = res.status();
            if c.allowed.contains(&who) {
                assert!(
                    status.is_success(),
                    "{who:?} {} {}: {status}",
                    c.method,
                    c.path
                );
            } else {
                assert_eq!(
                    api_error(res).await,
                    (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
                    "{who:?} {} {}",
                    c.method,
                    c.path
                );
            }
        }
        // What the owner did may have moved the epoch (a removal): every member renews.
        h.renew().await;
    }
    // Nothing a refused caller tried changed anything: hal is gone only by the owner's hand,
    // gus's invitation only by the owner's withdrawal, and the block only by writers.
    let left = h.env.members(&h.tickets[&Who::Owner], &f).await;
    let names: Vec<&str> = left.iter().map(|m| m.user.as_str()).collect();
    assert_eq!(names, ["ann", "bob", "carol"]);
    let bob = left.iter().find(|m| m.user == "bob").unwrap();
    assert_eq!(
        bob.stored_bytes,
        block.len() as u64,
        "the writer stored it first"
    );
    let path = format!("/folders/{f}/invitations/gus");
    let res = h.env.req(Method::GET, &path, Some(&h.gus.identity));
    assert_eq!(res.send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert!(h.env.listed_ticket(&h.hal, &f).await.is_none());
}

/// An invitation is seen by its invitee and the owner; accepting makes a member with the
/// invited role, declining leaves nothing, and a member may leave.
#[tokio::test]
async fn an_invitation_is_accepted_or_declined_and_a_member_may_leave() {
    let env = env().await;
    env.add_users(&["carol"]).await;
    let ann = env.login("ann").await;
    let bob = env.login("bob").await;
    let carol = env.login("carol").await;
    let docs = env.new_folder(&ann, "Docs", false).await;
    let (f, owner) = (docs.folder.id.as_str(), docs.ticket.ticket.as_str());

    assert_eq!(
        env.invite(owner, f, "bob", Role::Reader).await,
        StatusCode::CREATED
    );
    assert_eq!(
        env.invite(owner, f, "carol", Role::Writer).await,
        StatusCode::CREATED
    );
    // Inviting the owner, an unknown user or a member is refused with a reason.
    assert_eq!(
        env.invite(owner, f, "ann", Role::Reader).await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        env.invite(owner, f, "nobody", Role::Reader).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        env.invite(owner, f, "bob", Role::Owner).await,
        StatusCode::BAD_REQUEST
    );

    let waiting: Vec<Invitation> = env
        .req(Method::GET, "/users/bob/invitations", Some(&bob.identity))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(
        (
            waiting[0].folder_name.as_str(),
            waiting[0].owner.as_str(),
            waiting[0].role
        ),
        ("Docs", "ann", Role::Reader)
    );
    assert!(
        env.listed_ticket(&bob, f).await.is_none(),
        "not a member yet"
    );

    let grant = env.accept(&bob, f).await;
    assert_eq!(grant.rights, vec![Right::Read]);
    assert_eq!(env.entries(&grant.ticket.ticket, f).await.entries.len(), 0);
    let path = format!("/folders/{f}/invitations/carol");
    let res = env.req(Method::DELETE, &path, Some(&carol.identity));
    assert_eq!(res.send().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert!(env.listed_ticket(&carol, f).await.is_none());
    let path = format!("/folders/{f}/invitations/carol/accept");
    let res = env.req(Method::POST, &path, Some(&carol.identity));
    assert_eq!(res.send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(
        env.invite(owner, f, "bob", Role::Writer).await,
        StatusCode::CONFLICT
    );

    let bobs = env.listed_ticket(&bob, f).await.unwrap().ticket.ticket;
    let users: Vec<(String, Role)> = env
        .members(&bobs, f)
        .await
        .into_iter()
        .map(|m| (m.user, m.role))
        .collect();
    assert_eq!(
        users,
        [("ann".into(), Role::Owner), ("bob".into(), Role::Reader)]
    );
    assert_eq!(env.remove(owner, f, "ann").await, StatusCode::BAD_REQUEST);
    assert_eq!(env.remove(&bobs, f, "bob").await, StatusCode::NO_CONTENT);
    assert!(env.listed_ticket(&bob, f).await.is_none());
    assert_eq!(env.entries_status(&bobs, f).await, StatusCode::FORBIDDEN);
}

impl Env {
    async fn entries_status(&self, ticket: &str, folder: &str) -> StatusCode {
        let path = format!("/folders/{folder}/entries");
        let res = self.req(Method::GET, &path, Some(ticket));
        res.send().await.unwrap().status()
    }
}

/// The owner removes a writer: the writer's tickets are refused at once (a long poll that
/// waits ends refused), the folder leaves their listing and no peer ticket names it; the
/// other members' tickets from before are 401 (renew) and new ones work.
#[tokio::test]
async fn removal_refuses_the_members_tickets_at_once_and_others_renew() {
    let env = env().await;
    let ann = env.login("ann").await;
    let bob = env.login("bob").await;
    let docs = env.new_folder(&ann, "Docs", false).await;
    let f = docs.folder.id.clone();
    assert_eq!(
        env.invite(&docs.ticket.ticket, &f, "bob", Role::Writer)
            .await,
        StatusCode::CREATED
    );
    let bobs = env.accept(&bob, &f).await.ticket.ticket;
    assert_eq!(env.map(&ann, &f).await, StatusCode::OK);
    assert_eq!(env.map(&bob, &f).await, StatusCode::OK);
    let res = env.peer_ticket(&bob, &ann, Some(&f)).await;
    assert_eq!(res.status(), StatusCode::OK, "members who both mapped it");
    let anns = env.listed_ticket(&ann, &f).await.unwrap().ticket.ticket;

    let path = format!("/folders/{f}/changes?since=0&wait=25");
    let poll = env.req(Method::GET, &path, Some(&bobs)).send();
    let poll = tokio::spawn(poll);
    // The poll is waiting when the owner removes bob (a change it can see would answer it).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    assert_eq!(env.remove(&anns, &f, "bob").await, StatusCode::NO_CONTENT);
    let res = poll.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the poll ended on the removal"
    );

    assert_eq!(env.entries_status(&bobs, &f).await, StatusCode::FORBIDDEN);
    let h = BlockHash::of(b"x").to_hex();
    assert_eq!(env.block_status(&bobs, &f, &h).await, StatusCode::FORBIDDEN);
    let res = env.create(&bobs, &f, "e1", &dir("late", None)).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(env.listed_ticket(&bob, &f).await.is_none());
    let res = env
        .access(&bob, &format!("/folders/{f}"), &[Right::Read])
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = env.peer_ticket(&bob, &ann, Some(&f)).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    let res = env.req(Method::GET, &format!("/folders/{f}/entries"), Some(&anns));
    assert_eq!(
        api_error(res.send().await.unwrap()).await,
        (StatusCode::UNAUTHORIZED, ErrorCode::TicketExpired),
        "a ticket from before the removal is renewed"
    );
    let fresh = env.listed_ticket(&ann, &f).await.unwrap();
    assert_eq!(fresh.folder.epoch, 1);
    assert_eq!(env.entries(&fresh.ticket.ticket, &f).await.entries.len(), 0);
}

/// A new role applies to the next request: a writer made reader cannot write with the
/// ticket that could, and the ticket renewed carries only read.
#[tokio::test]
async fn a_writer_made_reader_writes_no_more() {
    let env = env().await;
    let ann = env.login("ann").await;
    let bob = env.login("bob").await;
    let docs = env.new_folder(&ann, "Docs", false).await;
    let f = docs.folder.id.clone();
    let owner = docs.ticket.ticket.clone();
    assert_eq!(
        env.invite(&owner, &f, "bob", Role::Writer).await,
        StatusCode::CREATED
    );
    let bobs = env.accept(&bob, &f).await.ticket.ticket;
    let res = env.create(&bobs, &f, "d1", &dir("mine", None)).await;
    assert_eq!(res.status(), StatusCode::CREATED);

    let path = format!("/folders/{f}/members/bob");
    let body = MemberUpdate {
        role: Role::Reader,
        max_bytes: None,
    };
    let res = env.req(Method::PUT, &path, Some(&owner)).json(&body);
    let res = res.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bob_now: Member = res.json().await.unwrap();
    assert_eq!(bob_now.role, Role::Reader);

    let res = env.create(&bobs, &f, "d2", &dir("more", None)).await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::UNAUTHORIZED, ErrorCode::TicketExpired)
    );
    let g = env.listed_ticket(&bob, &f).await.unwrap();
    assert_eq!(g.rights, vec![Right::Read]);
    let res = env
        .create(&g.ticket.ticket, &f, "d2", &dir("more", None))
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let anns = env.listed_ticket(&ann, &f).await.unwrap().ticket.ticket;
    let names: Vec<String> = env
        .entries(&anns, &f)
        .await
        .entries
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["mine"]);
}

/// A writer's blocks are charged to the owner, up to the share the owner set: past it the
/// writer gets 507 with a reason and nothing is stored; blocks nothing references are freed
/// by the collector, which gives the share back.
#[tokio::test]
async fn a_writers_blocks_count_for_the_owner_up_to_the_share_the_owner_set() {
    let env = env_with(|cfg| {
        cfg.retention.grace = Duration::from_secs(5);
        cfg.collect_every = Duration::from_millis(200);
    })
    .await;
    let ann = env.login("ann").await;
    let bob = env.login("bob").await;
    let docs = env.new_folder(&ann, "Docs", false).await;
    let f = docs.folder.id.clone();
    let owner = docs.ticket.ticket.clone();
    assert_eq!(
        env.invite_with(&owner, &f, "bob", Role::Writer, Some(2_000))
            .await,
        StatusCode::CREATED
    );
    let bobs = env.accept(&bob, &f).await.ticket.ticket;
    let blocks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1_000]).collect();
    for b in &blocks[..2] {
        let hash = BlockHash::of(b).to_hex();
        assert_eq!(
            env.put_block(&bobs, &f, &hash, b).await.status(),
            StatusCode::CREATED
        );
    }
    let hash = BlockHash::of(&blocks[2]).to_hex();
    let res = env.put_block(&bobs, &f, &hash, &blocks[2]).await;
    assert_eq!(
        api_error(res).await,
        (StatusCode::INSUFFICIENT_STORAGE, ErrorCode::QuotaExceeded)
    );
    assert_eq!(
        env.block_status(&bobs, &f, &hash).await,
        StatusCode::NOT_FOUND
    );
    // The owner's own uploads are not limited by bob's share.
    let res = env.put_block(&owner, &f, &hash, &blocks[2]).await;
    assert_eq!(res.status(), StatusCode::CREATED);

    let usage = |dev: &Dev| {
        let path = format!("/users/{}/usage", dev.user);
        let req = env.req(Method::GET, &path, Some(&dev.identity));
        async move { req.send().await.unwrap().json::<Usage>().await.unwrap() }
    };
    assert_eq!(
        usage(&bob).await.bytes_stored,
        0,
        "charged to the owner, not bob"
    );
    // Nothing references these blocks: the collector frees them, and bob's share is free.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let members = env.members(&owner, &f).await;
        let bob_m = members.iter().find(|m| m.user == "bob").unwrap();
        if bob_m.stored_bytes == 0 && usage(&ann).await.bytes_stored == 0 {
            assert_eq!(bob_m.max_bytes, Some(2_000));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unreferenced blocks were not freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hash = BlockHash::of(&blocks[0]).to_hex();
    let res = env.put_block(&bobs, &f, &hash, &blocks[0]).await;
    assert_eq!(res.status(), StatusCode::CREATED);
}
