use jiff::Timestamp;

use super::*;
use crate::core::Halt;

fn settings() -> BreakerSettings {
    BreakerSettings {
        max_offline_fraction: 0.2,
        min_fleet: 10,
        hold_sweeps: 3,
        max_restarts_per_sweep: 2,
        window_sweeps: 5,
    }
}

fn dead() -> Observation {
    Observation::not_running(Halt::Gone, "SpotInterrupted", "terminated")
}

fn vanished() -> Observation {
    Observation::not_running(Halt::Gone, "InstanceNotFound", "i-1 no longer exists")
}

fn entry(obs: Observation, hold: Hold, held_retry: Option<String>) -> Entry {
    Entry {
        backend_id: "i-1".into(),
        observation: obs,
        observed_at: Timestamp::UNIX_EPOCH,
        last_clean_at: Timestamp::UNIX_EPOCH,
        stale: false,
        zone: Some("us-east-1a".into()),
        hold,
        absent: false,
        held_retry,
    }
}

struct Fleet {
    uids: Vec<String>,
    now: Vec<Observation>,
    absent: Vec<bool>,
    known_dead: Vec<bool>,
    retry: Vec<Option<String>>,
    before: Vec<Option<Entry>>,
    zones: Vec<&'static str>,
    deaths: Vec<Death>,
    sweep: u64,
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
            absent: vec![false; n],
            known_dead: vec![false; n],
            retry: vec![None; n],
            before: (0..n)
                .map(|_| Some(entry(Observation::Running, Hold::None, None)))
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
            deaths: Vec::new(),
            sweep: 0,
        }
    }

    fn samples(&self) -> Vec<Sample<'_>> {
        (0..self.uids.len())
            .map(|i| Sample {
                uid: &self.uids[i],
                backend_id: "i-1",
                location: "us-east-1",
                zone: Some(self.zones[i]),
                now: &self.now[i],
                before: self.before[i].as_ref(),
                absent: self.absent[i],
                known_dead: self.known_dead[i],
                retry: self.retry[i].as_deref(),
            })
            .collect()
    }

    /// One sweep: assesses, then feeds the holds back as the next sweep's
    /// "before", as the snapshot does.
    fn sweep(&mut self) -> (HashMap<String, Hold>, Vec<Trip>) {
        self.sweep += 1;
        let a = assess(
            &self.samples(),
            &self.deaths,
            self.sweep,
            false,
            &settings(),
        );
        for i in 0..self.uids.len() {
            let hold = a.holds[&self.uids[i]];
            let held_retry = match (hold, &self.before[i]) {
                (Hold::Suspected { .. }, Some(b)) if matches!(b.hold, Hold::Suspected { .. }) => {
                    b.held_retry.clone()
                }
                (Hold::Suspected { .. }, _) => self.retry[i].clone(),
                _ => None,
            };
            self.before[i] = Some(entry(self.now[i].clone(), hold, held_retry));
        }
        self.deaths = a.deaths;
        (a.holds, a.trips)
    }
}

fn count(holds: &HashMap<String, Hold>, wanted: impl Fn(&Hold) -> bool) -> usize {
    holds.values().filter(|h| wanted(h)).count()
}

#[test]
fn a_few_deaths_pass_straight_through() {
    let (holds, trips) = Fleet::new(20, 2).sweep();
    assert!(trips.is_empty());
    assert!(holds.values().all(|h| *h == Hold::None));
}

#[test]
fn half_the_fleet_dying_at_once_is_held() {
    let (holds, trips) = Fleet::new(20, 10).sweep();
    assert!(
        trips
            .iter()
            .any(|t| t.zone.is_none() && t.not_running == 10)
    );
    assert_eq!(
        count(&holds, |h| *h
            == Hold::Suspected {
                sweeps: 1,
                absent: false
            }),
        10
    );
}

#[test]
fn small_fleets_never_trip() {
    let (holds, trips) = Fleet::new(9, 9).sweep();
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
    let (holds, trips) = fleet.sweep();
    assert_eq!(trips.len(), 1, "{trips:?}");
    assert_eq!(trips[0].zone.as_deref(), Some("us-east-1a"));
    assert_eq!(count(&holds, |h| matches!(h, Hold::Suspected { .. })), 6);
}

#[test]
fn persistent_answers_are_released_in_waves_after_the_hold() {
    let mut fleet = Fleet::new(20, 5);
    let mut released_per_sweep = Vec::new();
    for _ in 0..6 {
        let (holds, _) = fleet.sweep();
        released_per_sweep.push(count(&holds, |h| *h == Hold::Released));
    }
    // Held for sweeps 1 and 2; from sweep 3 on, at most 2 more per sweep.
    assert_eq!(released_per_sweep, vec![0, 0, 2, 4, 5, 5]);
}

#[test]
fn answers_that_recover_during_the_hold_are_dropped() {
    let mut fleet = Fleet::new(20, 10);
    fleet.sweep();
    for i in 0..10 {
        fleet.now[i] = Observation::Running;
    }
    let (holds, trips) = fleet.sweep();
    assert!(trips.is_empty());
    assert!(holds.values().all(|h| *h == Hold::None));
}

#[test]
fn deaths_spread_over_several_sweeps_still_trip() {
    // 20 Workspaces; 2 more die in each sweep: never more than 20% in one
    // sweep, but the third sweep brings the window to 6 of 20.
    let mut fleet = Fleet::new(20, 0);
    let mut held_per_sweep = Vec::new();
    for sweep in 0..3 {
        fleet.now[2 * sweep] = dead();
        fleet.now[2 * sweep + 1] = dead();
        let (holds, _) = fleet.sweep();
        held_per_sweep.push(count(&holds, |h| matches!(h, Hold::Suspected { .. })));
    }
    assert_eq!(held_per_sweep, vec![0, 0, 2]);
}

#[test]
fn a_replacement_that_runs_does_not_undo_the_death_it_replaced() {
    // Two die and are replaced (new instances, running) before two more die:
    // the window still holds all four of 20... and one more makes five.
    let mut fleet = Fleet::new(20, 0);
    fleet.now[0] = dead();
    fleet.now[1] = dead();
    fleet.now[2] = dead();
    fleet.sweep();
    let mut replaced = Fleet::new(20, 0);
    replaced.deaths = fleet.deaths.clone();
    replaced.sweep = fleet.sweep;
    for i in 0..3 {
        replaced.before[i] = None;
    }
    let ids: Vec<String> = (0..20).map(|i| format!("i-new{i}")).collect();
    replaced.now[3] = dead();
    replaced.now[4] = dead();
    replaced.sweep += 1;
    let samples: Vec<Sample> = replaced
        .samples()
        .into_iter()
        .enumerate()
        .map(|(i, s)| Sample {
            backend_id: if i < 3 { &ids[i] } else { s.backend_id },
            ..s
        })
        .collect();
    let a = assess(
        &samples,
        &replaced.deaths,
        replaced.sweep,
        false,
        &settings(),
    );
    assert!(!a.trips.is_empty(), "3 earlier deaths + 2 now = 5 of 20");
}

#[test]
fn deaths_older_than_the_window_no_longer_count() {
    let mut fleet = Fleet::new(20, 0);
    fleet.now[0] = dead();
    fleet.now[1] = dead();
    fleet.now[2] = dead();
    fleet.sweep();
    // Five quiet sweeps later the first three are out of the window.
    for _ in 0..5 {
        fleet.sweep();
    }
    fleet.now[3] = dead();
    fleet.now[4] = dead();
    let (holds, trips) = fleet.sweep();
    assert!(trips.is_empty(), "{trips:?}");
    assert_eq!(count(&holds, |h| matches!(h, Hold::Suspected { .. })), 0);
}

#[test]
fn a_mass_absence_waits_for_a_retry_annotation() {
    let mut fleet = Fleet::new(20, 0);
    for i in 0..10 {
        fleet.now[i] = vanished();
        fleet.absent[i] = true;
    }
    for _ in 0..8 {
        let (holds, _) = fleet.sweep();
        assert_eq!(
            count(&holds, |h| matches!(
                h,
                Hold::Suspected { absent: true, .. }
            )),
            10,
            "never believed on its own"
        );
    }
    // A human sets tend.dev/retry on three of them.
    for i in 0..3 {
        fleet.retry[i] = Some("1".into());
    }
    let (holds, _) = fleet.sweep();
    assert_eq!(count(&holds, |h| *h == Hold::Released), 2, "in waves");
    let (holds, _) = fleet.sweep();
    assert_eq!(count(&holds, |h| *h == Hold::Released), 3);
    assert_eq!(count(&holds, |h| matches!(h, Hold::Suspected { .. })), 7);
}

#[test]
fn workspaces_already_offline_are_no_new_deaths_after_a_restart() {
    // A controller restart: nothing from before, but status already says
    // half the fleet is Offline.
    let mut fleet = Fleet::new(20, 10);
    for i in 0..20 {
        fleet.before[i] = None;
        fleet.known_dead[i] = i < 10;
    }
    let (holds, trips) = fleet.sweep();
    assert!(trips.is_empty(), "{trips:?}");
    assert!(holds.values().all(|h| *h == Hold::None));
}

#[test]
fn deaths_that_left_the_sweep_still_count_in_their_group() {
    // 10 Workspaces; 2 die and pass (20% is not more than 20%). Healing them
    // takes them out of the sweep (a replacement that cannot launch leaves
    // them Failed), and then a third dies: 3 of the 10 within the window,
    // though only 8 are still swept.
    let mut fleet = Fleet::new(10, 2);
    let (holds, trips) = fleet.sweep();
    assert!(trips.is_empty(), "{trips:?}");
    assert!(holds.values().all(|h| *h == Hold::None));
    fleet.now[2] = dead();
    let samples: Vec<Sample> = fleet.samples().into_iter().skip(2).collect();
    let a = assess(&samples, &fleet.deaths, fleet.sweep + 1, false, &settings());
    let region = a.trips.iter().find(|t| t.zone.is_none());
    assert_eq!(
        region.map(|t| (t.not_running, t.observed)),
        Some((3, 10)),
        "{:?}",
        a.trips
    );
    assert_eq!(
        a.holds["u002"],
        Hold::Suspected {
            sweeps: 1,
            absent: false
        }
    );
    assert_eq!(
        a.deaths.len(),
        3,
        "the two out of the sweep stay in the window"
    );
}

#[test]
fn early_sweeps_hold_new_deaths_but_keep_the_intervals_pace() {
    let mut fleet = Fleet::new(20, 10);
    let (holds, _) = fleet.sweep();
    assert_eq!(count(&holds, |h| matches!(h, Hold::Suspected { .. })), 10);
    // However many early sweeps come in between, none counts towards the
    // hold or lets a wave through.
    let mut early = assess(
        &fleet.samples(),
        &fleet.deaths,
        fleet.sweep,
        true,
        &settings(),
    );
    for _ in 0..5 {
        let before: Vec<Option<Entry>> = (0..20)
            .map(|i| {
                Some(entry(
                    fleet.now[i].clone(),
                    early.holds[&fleet.uids[i]],
                    None,
                ))
            })
            .collect();
        fleet.before = before;
        early = assess(
            &fleet.samples(),
            &fleet.deaths,
            fleet.sweep,
            true,
            &settings(),
        );
        assert_eq!(count(&early.holds, |h| *h == Hold::Released), 0);
        assert_eq!(
            count(&early.holds, |h| *h
                == Hold::Suspected {
                    sweeps: 1,
                    absent: false
                }),
            10
        );
    }
    // A new death in an early sweep is held with the rest.
    fleet.now[10] = dead();
    let a = assess(
        &fleet.samples(),
        &fleet.deaths,
        fleet.sweep,
        true,
        &settings(),
    );
    assert!(matches!(a.holds["u010"], Hold::Suspected { sweeps: 1, .. }));
    assert_eq!(a.deaths.len(), 11);
}

#[test]
fn a_group_with_no_member_in_the_sweep_does_not_trip() {
    // Half a region died, then an early sweep looks at another region only.
    let mut fleet = Fleet::new(20, 10);
    fleet.sweep();
    let elsewhere: Vec<Sample> = fleet
        .samples()
        .into_iter()
        .take(1)
        .map(|s| Sample {
            uid: "other",
            location: "eu-west-1",
            zone: None,
            now: &Observation::Running,
            before: None,
            ..s
        })
        .collect();
    let a = assess(&elsewhere, &fleet.deaths, fleet.sweep, true, &settings());
    assert!(a.trips.is_empty(), "{:?}", a.trips);
    assert_eq!(a.deaths.len(), 10, "the deaths stay in the window");
}
