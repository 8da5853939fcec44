//! Power cuts under load, on a filesystem that drops what was not fsynced (`switchyard-testfs`,
//! after Jepsen's LazyFS): `switchyard serve` runs with its store on it under concurrent
//! starts and commands; at a random moment the process is killed and the power cut; after the
//! "reboot" the next round runs on what survived. In `fsync` mode every acknowledged command
//! must be there exactly once and the feed gap-free. `flush` mode promises only to survive a
//! process crash; its test reports what a power cut costs it (BRIEF: guarantee 1; docs/storage.md).
//!
//! Needs root and /dev/fuse (CI runs as root). `SWITCHYARD_POWER_SEED` replays a run.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_core::{
    DeciderRegistry, Engine, EngineConfig, EventType, InstanceId, ListRequest, RuleLimits,
    SledConfig, StoreConfig,
};
use switchyard_grpc::auth::token_hash;
use switchyard_grpc::pb;
use switchyard_grpc::pb::instance_service_client::InstanceServiceClient;
use switchyard_testfs::Disk;

const TOKEN: &str = "power-test-token";
const WORKERS: usize = 12;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules")
}

/// What the server acknowledged: instance → its business key and the request ids of the
/// commands acknowledged on it, in order.
#[derive(Default)]
struct Acks {
    starts: BTreeMap<InstanceId, String>,
    assigns: HashMap<InstanceId, Vec<String>>,
}

/// A small deterministic generator (xorshift64*), seeded per run and printed.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let seed = std::env::var("SWITCHYARD_POWER_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("SWITCHYARD_POWER_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn spawn_server(config: &Path, data: &Path, durability: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--rules")
        .arg(rules_dir())
        .arg("--data-dir")
        .arg(data)
        .env("SWITCHYARD_GRPC_LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD_METRICS_ENABLED", "false")
        .env("SWITCHYARD_DASHBOARD_ENABLED", "false")
        .env("SWITCHYARD_STORE_DURABILITY", durability)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("switchyard listening on ")
        .unwrap_or_else(|| panic!("the server did not start: {line:?}"))
        .to_string();
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (child, addr)
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
}

/// One worker: start a lead, assign it, repeat — recording what was acknowledged — until the
/// server is gone.
async fn worker(addr: String, round: usize, worker: usize, acks: Arc<Mutex<Acks>>) {
    let Ok(channel) = tonic::transport::Channel::from_shared(addr)
        .unwrap()
        .connect()
        .await
    else {
        return;
    };
    let mut client = InstanceServiceClient::new(channel);
    for n in 0.. {
        let key = format!("r{round}-w{worker}-{n}");
        let started = client
            .start_instance(authed(pb::StartInstanceRequest {
                request_id: key.clone(),
                definition: "lead".into(),
                business_key: key.clone(),
                data_json: format!("{{\"company\": \"{key}\"}}"),
                ..Default::default()
            }))
            .await;
        let Ok(started) = started else { return };
        let id: InstanceId = started
            .into_inner()
            .result
            .unwrap()
            .instance_id
            .parse()
            .unwrap();
        acks.lock().unwrap().starts.insert(id, key.clone());
        let request_id = format!("{key}-assign");
        let assigned = client
            .send_command(authed(pb::SendCommandRequest {
                request_id: request_id.clone(),
                instance_id: id.to_string(),
                command: "assign".into(),
                payload_json: "{\"owner\": \"rep-7\"}".into(),
                ..Default::default()
            }))
            .await;
        let Ok(_) = assigned else { return };
        acks.lock()
            .unwrap()
            .assigns
            .entry(id)
            .or_default()
            .push(request_id);
    }
}

/// Runs load against a server on the mounted disk and kills it at a random moment after at
/// least `min_acks` new acknowledgements.
fn round_under_load(
    runtime: &tokio::runtime::Runtime,
    mut server: Child,
    addr: String,
    round: usize,
    acks: &Arc<Mutex<Acks>>,
    rng: &mut Rng,
) {
    let before = acks.lock().unwrap().starts.len();
    let min_acks = 40 + rng.below(200) as usize;
    let extra = Duration::from_millis(rng.below(400));
    runtime.block_on(async {
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| tokio::spawn(worker(addr.clone(), round, w, acks.clone())))
            .collect();
        let started = Instant::now();
        while acks.lock().unwrap().starts.len() < before + min_acks {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "round {round}: the server acknowledged too little in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(extra).await;
        // The power goes: the process first (nothing it still had to say reaches the disk).
        server.kill().unwrap();
        server.wait().unwrap();
        for w in workers {
            tokio::time::timeout(Duration::from_secs(30), w)
                .await
                .expect("every worker ends once the server is gone")
                .unwrap();
        }
    });
}

/// Opens the store as it is after the last cut.
fn open(runtime: &tokio::runtime::Runtime, data: &Path) -> Result<Engine, String> {
    runtime.block_on(async {
        let mut config = EngineConfig::new(StoreConfig::Sled(SledConfig::new(data)));
        config.background_tasks = false;
        Engine::open_with_rules(
            config,
            &rules_dir(),
            DeciderRegistry::new(),
            RuleLimits::default(),
        )
        .await
        .map_err(|e| e.to_string())
    })
}

/// What survived, compared with what was acknowledged.
#[derive(Debug, Default)]
struct Survey {
    starts_lost: usize,
    assigns_lost: usize,
    /// Instances whose business key is there more than once, commands applied twice.
    doubled: Vec<String>,
    /// Feed offsets missing between the earliest and the head.
    feed_gaps: Vec<u64>,
    /// Acknowledged changes with no event, or more than one.
    events_wrong: Vec<String>,
}

fn survey(runtime: &tokio::runtime::Runtime, engine: &Engine, acks: &Acks) -> Survey {
    runtime.block_on(async {
        let mut survey = Survey::default();
        for (id, key) in &acks.starts {
            let Ok(instance) = engine.get(*id).await else {
                survey.starts_lost += 1;
                continue;
            };
            assert_eq!(&instance.business_key, key);
            let mut request = ListRequest::new().page_size(10);
            request.definition = Some("lead".into());
            request.business_key = Some(key.clone());
            let same_key = engine.list(request).await.unwrap().items.len();
            if same_key != 1 {
                survey.doubled.push(format!("{key}: {same_key} instances"));
            }
            let history = engine.history(*id, 0, 100).await.unwrap();
            let acked = acks.assigns.get(id).map_or(0, Vec::len);
            let applied = history
                .iter()
                .filter(|h| h.command.as_deref() == Some("assign"))
                .count();
            if applied > 1 {
                survey
                    .doubled
                    .push(format!("{key}: assign applied {applied} times"));
            }
            survey.assigns_lost += acked.saturating_sub(applied);
        }
        survey.assigns_lost += acks
            .assigns
            .keys()
            .filter(|id| !acks.starts.contains_key(id))
            .count();

        let (earliest, head) = engine.feed_bounds().unwrap();
        let mut feed = engine.subscribe(earliest.saturating_sub(1)).unwrap();
        let mut expected = earliest.max(1);
        let mut events: HashMap<(String, EventType), usize> = HashMap::new();
        while expected <= head {
            let event = tokio::time::timeout(Duration::from_secs(10), feed.next())
                .await
                .expect("the feed delivers up to its head")
                .unwrap();
            while expected < event.offset {
                survey.feed_gaps.push(expected);
                expected += 1;
            }
            expected = event.offset + 1;
            *events
                .entry((event.subject.clone(), event.kind))
                .or_default() += 1;
        }
        for (id, key) in &acks.starts {
            let started = events
                .get(&(id.to_string(), EventType::InstanceStarted))
                .copied()
                .unwrap_or(0);
            if engine.get(*id).await.is_ok() && started != 1 {
                survey
                    .events_wrong
                    .push(format!("{key}: {started} started events"));
            }
        }
        survey
    })
}

struct Setup {
    _root: tempfile::TempDir,
    mount_point: PathBuf,
    config: PathBuf,
    data: PathBuf,
}

fn setup() -> Setup {
    let root = tempfile::tempdir().unwrap();
    let mount_point = root.path().join("disk");
    std::fs::create_dir(&mount_point).unwrap();
    let config = root.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\nsha256 = \"{}\"\nactor = \"loader\"\nroles = [\"sales_manager\"]\n",
            token_hash(TOKEN)
        ),
    )
    .unwrap();
    Setup {
        data: mount_point.join("data"),
        mount_point,
        config,
        _root: root,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn fsync_mode_keeps_every_acknowledged_command_through_power_cuts() {
    let setup = setup();
    let disk = Disk::new();
    let runtime = runtime();
    let acks: Arc<Mutex<Acks>> = Arc::default();
    let mut rng = Rng::seeded();
    for round in 0..8 {
        let mounted = disk
            .mount(&setup.mount_point)
            .expect("mounting the test filesystem (needs root and /dev/fuse)");
        if round > 0 {
            // sled does not sync its `conf` file itself; the store does in fsync mode.
            let conf = std::fs::metadata(setup.data.join("conf")).unwrap();
            assert!(
                conf.len() > 0,
                "round {round}: sled's conf file came back empty"
            );
        }
        let (server, addr) = spawn_server(&setup.config, &setup.data, "fsync");
        round_under_load(&runtime, server, addr, round, &acks, &mut rng);
        let cut = mounted.power_cut().unwrap();
        let acks = acks.lock().unwrap();
        eprintln!(
            "round {round}: {} starts and {} assigns acknowledged so far; the cut dropped {} unsynced pages in {} files",
            acks.starts.len(),
            acks.assigns.len(),
            cut.pages,
            cut.files
        );
    }
    let _mounted = disk.mount(&setup.mount_point).unwrap();
    let engine = open(&runtime, &setup.data).expect("the store opens after a power cut");
    let acks = acks.lock().unwrap();
    let survey = survey(&runtime, &engine, &acks);
    runtime.block_on(engine.shutdown());
    eprintln!("{survey:?}; disk: {:?}", disk.stats());
    assert_eq!(survey.starts_lost, 0, "{survey:?}");
    assert_eq!(survey.assigns_lost, 0, "{survey:?}");
    assert!(survey.doubled.is_empty(), "{survey:?}");
    assert!(survey.feed_gaps.is_empty(), "{survey:?}");
    assert!(survey.events_wrong.is_empty(), "{survey:?}");
    assert!(
        acks.starts.len() >= 160,
        "too little load: {}",
        acks.starts.len()
    );
}

#[test]
fn flush_mode_loses_what_was_not_synced_at_a_power_cut_and_says_so() {
    let setup = setup();
    let disk = Disk::new();
    let runtime = runtime();
    let acks: Arc<Mutex<Acks>> = Arc::default();
    let mut rng = Rng::seeded();
    let mounted = disk.mount(&setup.mount_point).unwrap();
    let (server, addr) = spawn_server(&setup.config, &setup.data, "flush");
    round_under_load(&runtime, server, addr, 0, &acks, &mut rng);
    let cut = mounted.power_cut().unwrap();
    let _mounted = disk.mount(&setup.mount_point).unwrap();
    let acks = acks.lock().unwrap();
    let engine = open(&runtime, &setup.data).expect("the store opens after a power cut");
    let survey = survey(&runtime, &engine, &acks);
    runtime.block_on(engine.shutdown());
    eprintln!(
        "flush mode, power cut after {} acknowledged starts ({} pages unsynced): {survey:?}",
        acks.starts.len(),
        cut.pages
    );
    // What is there is whole: nothing doubled, no hole in the feed.
    assert!(survey.doubled.is_empty(), "{survey:?}");
    assert!(survey.feed_gaps.is_empty(), "{survey:?}");
    assert!(survey.events_wrong.is_empty(), "{survey:?}");
}
