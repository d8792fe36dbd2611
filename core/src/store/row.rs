//! The memory store's compact form of a [`Task`].
//!
//! A `Task` is 368 bytes plus a heap allocation per string. A [`Row`] keeps
//! the fields the store reads and writes while claiming as plain fields,
//! the policy in 16 bytes (every bound [`Policy::validate`] sets fits in 32
//! bits) and packs the nine text fields into one allocation with their end
//! offsets: 152 bytes plus its text, so that a stored task (the row and
//! the pointer to its run state) takes one 160-byte slot of the store's
//! task slab.
//! Reads rebuild a `Task` (they cloned every string before too, so a read
//! costs what it did).
//!
//! Invariant: `text[ends[i-1]..ends[i]]` is text field `i` (in the order of
//! [`Text`]; the last field ends where the text does), each on a character
//! boundary; absent optional fields are empty and flagged absent in
//! `flags`.

use chrono::{DateTime, Utc};

use crate::error::Error;
use crate::model::{
    Misfire, Notification, NotificationMethod, Overlap, Policy, Task, TaskId, TaskStatus,
};

/// The text fields, in their packing order.
#[derive(Clone, Copy)]
enum Text {
    Tenant,
    Name,
    Description,
    Agent,
    Prompt,
    Timezone,
    Schedule,
    Channel,
    Destination,
}

const FIELDS: usize = 9;

/// `schedule` is present.
const HAS_SCHEDULE: u8 = 1;
/// `channel_id` is present.
const HAS_CHANNEL: u8 = 1 << 1;
/// `prompt` equals `description` and is not stored twice.
const PROMPT_IS_DESCRIPTION: u8 = 1 << 2;

#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) id: TaskId,
    pub(crate) next_run: Option<DateTime<Utc>>,
    pub(crate) last_run: Option<DateTime<Utc>>,
    run_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    pub(crate) version: u64,
    policy: PackedPolicy,
    pub(crate) enabled: bool,
    pub(crate) status: TaskStatus,
    notification: Option<NotificationMethod>,
    flags: u8,
    /// The ends of every field but the last.
    ends: [u32; FIELDS - 1],
    text: Box<str>,
}

/// A [`Policy`] within its validated bounds, in 16 bytes.
#[derive(Debug, Clone, Copy)]
struct PackedPolicy {
    misfire: Misfire,
    overlap: Overlap,
    /// At most [`MAX_RETRIES`](crate::model) (100).
    max_retries: u8,
    retry_backoff_ms: u32,
    /// 0: none (a timeout is at least 1 ms).
    timeout_ms: u32,
    jitter_ms: u32,
}

// Every value `Policy::validate` accepts fits the packed fields; raising a
// bound past them must change the packing, not start refusing valid tasks.
const _: () = assert!(
    crate::model::MAX_RETRIES <= u8::MAX as u32
        && crate::model::MAX_BACKOFF_MS <= u32::MAX as u64
        && crate::model::MAX_TIMEOUT_MS <= u32::MAX as u64
        && crate::model::MAX_JITTER_MS <= u32::MAX as u64
);

impl PackedPolicy {
    /// Packs `policy`, refusing one [`Policy::validate`] refuses (only a
    /// task built by hand, not through `NewTask` or `TaskPatch`, can carry
    /// one), so nothing is cut to fit.
    fn new(policy: &Policy) -> Result<Self, Error> {
        policy.validate()?;
        // Within the bounds just checked, which the assertion above shows fit.
        Ok(Self {
            misfire: policy.misfire,
            overlap: policy.overlap,
            max_retries: policy.max_retries as u8,
            retry_backoff_ms: policy.retry_backoff_ms as u32,
            timeout_ms: policy.timeout_ms.unwrap_or(0) as u32,
            jitter_ms: policy.jitter_ms as u32,
        })
    }

    fn unpack(self) -> Policy {
        Policy {
            misfire: self.misfire,
            overlap: self.overlap,
            max_retries: u32::from(self.max_retries),
            retry_backoff_ms: u64::from(self.retry_backoff_ms),
            timeout_ms: (self.timeout_ms != 0).then_some(u64::from(self.timeout_ms)),
            jitter_ms: u64::from(self.jitter_ms),
        }
    }
}

impl Row {
    /// Packs `task`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] if the text fields add up to 4 GiB or more, or if
    /// the policy is outside the bounds [`Policy::validate`] sets.
    pub(crate) fn new(task: &Task) -> Result<Self, Error> {
        let policy = PackedPolicy::new(&task.policy)?;
        let prompt_is_description = task.prompt == task.description;
        let parts: [&str; FIELDS] = [
            &task.tenant,
            &task.name,
            &task.description,
            &task.agent,
            if prompt_is_description {
                ""
            } else {
                &task.prompt
            },
            &task.timezone,
            task.schedule.as_deref().unwrap_or_default(),
            task.channel_id.as_deref().unwrap_or_default(),
            task.notification
                .as_ref()
                .map_or("", |n| n.destination.as_str()),
        ];
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if u32::try_from(total).is_err() {
            return Err(Error::invalid(
                "task",
                "text fields add up to 4 GiB or more",
            ));
        }
        let mut text = String::with_capacity(total);
        let mut ends = [0u32; FIELDS - 1];
        for (i, part) in parts.into_iter().enumerate() {
            text.push_str(part);
            if let Some(end) = ends.get_mut(i) {
                // Below the total, checked above.
                *end = text.len() as u32;
            }
        }
        let mut flags = 0;
        if task.schedule.is_some() {
            flags |= HAS_SCHEDULE;
        }
        if task.channel_id.is_some() {
            flags |= HAS_CHANNEL;
        }
        if prompt_is_description {
            flags |= PROMPT_IS_DESCRIPTION;
        }
        Ok(Self {
            id: task.id,
            next_run: task.next_run,
            last_run: task.last_run,
            run_at: task.run_at,
            created_at: task.created_at,
            updated_at: task.updated_at,
            version: task.version,
            policy,
            enabled: task.enabled,
            status: task.status,
            notification: task.notification.as_ref().map(|n| n.method),
            flags,
            ends,
            text: text.into_boxed_str(),
        })
    }

    fn text(&self, field: Text) -> &str {
        let i = field as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let end = self.ends.get(i).map_or(self.text.len(), |&e| e as usize);
        self.text.get(start..end).unwrap_or_default()
    }

    /// The task's policy.
    pub(crate) fn policy(&self) -> Policy {
        self.policy.unpack()
    }

    /// The owning tenant.
    pub(crate) fn tenant(&self) -> &str {
        self.text(Text::Tenant)
    }

    /// Whether the task is recurring (has a cron schedule).
    pub(crate) fn has_schedule(&self) -> bool {
        self.flags & HAS_SCHEDULE != 0
    }

    /// The task, unpacked.
    pub(crate) fn task(&self) -> Task {
        let owned = |field| self.text(field).to_owned();
        let description = owned(Text::Description);
        let prompt = if self.flags & PROMPT_IS_DESCRIPTION != 0 {
            description.clone()
        } else {
            owned(Text::Prompt)
        };
        Task {
            id: self.id,
            tenant: owned(Text::Tenant),
            name: owned(Text::Name),
            description,
            agent: owned(Text::Agent),
            prompt,
            schedule: self.has_schedule().then(|| owned(Text::Schedule)),
            run_at: self.run_at,
            timezone: owned(Text::Timezone),
            enabled: self.enabled,
            status: self.status,
            channel_id: (self.flags & HAS_CHANNEL != 0).then(|| owned(Text::Channel)),
            notification: self.notification.map(|method| Notification {
                method,
                destination: owned(Text::Destination),
            }),
            policy: self.policy(),
            last_run: self.last_run,
            next_run: self.next_run,
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewTask;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_893_456_000, 0).unwrap()
    }

    #[test]
    fn round_trips_every_field() {
        let mut full = NewTask::cron("náme", "agent", "*/5 * * * *");
        full.description = Some("desc 日本".into());
        full.prompt = Some("a different prompt".into());
        full.timezone = Some("Europe/London".into());
        full.channel_id = Some("#ops".into());
        full.notification = Some(Notification {
            method: NotificationMethod::Http,
            destination: "http://example.test/hook".into(),
        });
        let mut task = full.validate("tenant-1", now()).unwrap();
        task.last_run = Some(now());
        task.status = TaskStatus::Paused;
        task.enabled = false;
        assert_eq!(Row::new(&task).unwrap().task(), task);

        // Defaults: prompt = description, no schedule, channel or notification.
        let once = NewTask::once("n", "a", now()).validate("t", now()).unwrap();
        let row = Row::new(&once).unwrap();
        assert_eq!(row.task(), once);
        assert_eq!(row.tenant(), "t");
        assert!(!row.has_schedule());

        // Empty strings that are present stay present.
        let mut odd = once.clone();
        odd.channel_id = Some(String::new());
        odd.schedule = Some(String::new());
        odd.prompt = "p".into();
        odd.description = String::new();
        assert_eq!(Row::new(&odd).unwrap().task(), odd);
    }

    #[test]
    fn is_compact() {
        // With the store's pointer to the run state: one 160-byte slab slot.
        assert!(
            std::mem::size_of::<Row>() <= 152,
            "Row is {} bytes",
            std::mem::size_of::<Row>()
        );
    }

    #[test]
    fn policy_round_trips_at_its_bounds_and_refuses_past_them() {
        let mut task = NewTask::cron("n", "a", "* * * * *")
            .validate("t", now())
            .unwrap();
        for policy in [
            Policy::default(),
            Policy {
                misfire: Misfire::CatchUp,
                overlap: Overlap::Replace,
                max_retries: 100,
                retry_backoff_ms: 600_000,
                timeout_ms: Some(7 * 24 * 3_600_000),
                jitter_ms: 3_600_000,
            },
            Policy {
                timeout_ms: Some(1),
                retry_backoff_ms: 1,
                ..Policy::default()
            },
        ] {
            task.policy = policy;
            assert_eq!(Row::new(&task).unwrap().policy(), policy);
        }
        task.policy = Policy {
            jitter_ms: u64::from(u32::MAX) + 1,
            ..Policy::default()
        };
        let err = Row::new(&task).unwrap_err().to_string();
        assert!(err.contains("policy.jitter_ms"), "{err}");
        task.policy = Policy {
            timeout_ms: Some(0),
            ..Policy::default()
        };
        let err = Row::new(&task).unwrap_err().to_string();
        assert!(err.contains("policy.timeout_ms"), "{err}");
    }
}
