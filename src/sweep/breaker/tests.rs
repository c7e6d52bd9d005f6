use jiff::Timestamp;

use super::*;
use crate::core::Halt;

fn settings() -> BreakerSettings {
    BreakerSettings {
        max_offline_fraction: 0.2,
        min_fleet: 10,
        hold_sweeps: 3,
        max_restarts_per_sweep: 2,
    }
}

fn dead() -> Observation {
    Observation::not_running(Halt::Gone, "SpotInterrupted", "terminated")
}

fn entry(obs: Observation, hold: Hold) -> Entry {
    Entry {
        instance_id: "i-1".into(),
        observation: obs,
        observed_at: Timestamp::UNIX_EPOCH,
        last_clean_at: Timestamp::UNIX_EPOCH,
        stale: false,
        zone: Some("us-east-1a".into()),
        hold,
    }
}

struct Fleet {
    uids: Vec<String>,
    now: Vec<Observation>,
    before: Vec<Option<Entry>>,
    zones: Vec<&'static str>,
}

impl Fleet {
    /// `n` Workspaces, all Running before, the first `dead` of them NotRunning now.
    fn new(n: usize, dead_now: usize) -> Fleet {
        Fleet {
            uids: (0..n).map(|i| format!("u{i:03}")).collect(),
            now: (0..n)
                .map(|i| {
                    if i < dead_now {
                        dead()
                    } else {
                        Observation::Running
                    }
                })
                .collect(),
            before: (0..n)
                .map(|_| Some(entry(Observation::Running, Hold::None)))
                .collect(),
            zones: (0..n)
                .map(|i| {
                    if i % 2 == 0 {
                        "us-east-1a"
                    } else {
                        "us-east-1b"
                    }
                })
                .collect(),
        }
    }

    fn samples(&self) -> Vec<Sample<'_>> {
        (0..self.uids.len())
            .map(|i| Sample {
                uid: &self.uids[i],
                region: "us-east-1",
                zone: Some(self.zones[i]),
                now: &self.now[i],
                before: self.before[i].as_ref(),
            })
            .collect()
    }

    /// Feeds this sweep's holds back as the next sweep's "before".
    fn carry(&mut self, holds: &HashMap<String, Hold>) {
        for i in 0..self.uids.len() {
            self.before[i] = Some(entry(self.now[i].clone(), holds[&self.uids[i]]));
        }
    }
}

#[test]
fn a_few_deaths_pass_straight_through() {
    let fleet = Fleet::new(20, 2);
    let (holds, trips) = assess(&fleet.samples(), &settings());
    assert!(trips.is_empty());
    assert!(holds.values().all(|h| *h == Hold::None));
}

#[test]
fn half_the_fleet_dying_at_once_is_held() {
    let fleet = Fleet::new(20, 10);
    let (holds, trips) = assess(&fleet.samples(), &settings());
    assert!(
        trips
            .iter()
            .any(|t| t.zone.is_none() && t.newly_not_running == 10)
    );
    assert_eq!(
        holds
            .values()
            .filter(|h| **h == Hold::Suspected { sweeps: 1 })
            .count(),
        10
    );
}

#[test]
fn small_fleets_never_trip() {
    let fleet = Fleet::new(9, 9);
    let (holds, trips) = assess(&fleet.samples(), &settings());
    assert!(trips.is_empty());
    assert!(holds.values().all(|h| *h == Hold::None));
}

#[test]
fn one_zone_can_trip_alone() {
    // 40 Workspaces, 20 per zone; 6 of zone a die: 15% of the region, 30% of the zone.
    let mut fleet = Fleet::new(40, 0);
    let mut killed = 0;
    for i in 0..40 {
        if fleet.zones[i] == "us-east-1a" && killed < 6 {
            fleet.now[i] = dead();
            killed += 1;
        }
    }
    let (holds, trips) = assess(&fleet.samples(), &settings());
    assert_eq!(trips.len(), 1, "{trips:?}");
    assert_eq!(trips[0].zone.as_deref(), Some("us-east-1a"));
    assert_eq!(
        holds
            .values()
            .filter(|h| matches!(h, Hold::Suspected { .. }))
            .count(),
        6
    );
}

#[test]
fn persistent_answers_are_released_in_waves_after_the_hold() {
    let mut fleet = Fleet::new(20, 5);
    let mut released_per_sweep = Vec::new();
    for _ in 0..6 {
        let (holds, _) = assess(&fleet.samples(), &settings());
        released_per_sweep.push(holds.values().filter(|h| **h == Hold::Released).count());
        fleet.carry(&holds);
    }
    // Held for sweeps 1 and 2; from sweep 3 on, at most 2 more per sweep.
    assert_eq!(released_per_sweep, vec![0, 0, 2, 4, 5, 5]);
}

#[test]
fn answers_that_recover_during_the_hold_are_dropped() {
    let mut fleet = Fleet::new(20, 10);
    let (holds, _) = assess(&fleet.samples(), &settings());
    fleet.carry(&holds);
    for i in 0..10 {
        fleet.now[i] = Observation::Running;
    }
    let (holds, trips) = assess(&fleet.samples(), &settings());
    assert!(trips.is_empty());
    assert!(holds.values().all(|h| *h == Hold::None));
}
