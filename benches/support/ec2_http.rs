//! A fast EC2 for the controller benchmark: DescribeInstances over EC2's
//! query protocol (a form-encoded POST answered in XML), from a fleet held in
//! memory, so that the controller's whole SDK path is measured without moto's
//! cost per instance.
//!
//! It answers as EC2 does where tend depends on it: the `instance-id`,
//! `instance-state-name` and `tag:KEY` filters leave out what does not match;
//! naming an unknown id in `InstanceIds` fails the whole call with
//! `InvalidInstanceID.NotFound`, naming every unknown id. Any other action or
//! filter is refused with an error, so a call the benchmark did not expect
//! shows up as a failure. Every call waits `latency` before it is answered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::faults::{ParsedRequest, ProxyBody, error_response, full, set_headers, xml_escape};

/// One simulated instance: running, with its volumes attached.
#[derive(Debug, Clone)]
pub struct SimInstance {
    pub id: String,
    pub zone: String,
    /// `(device name, volume id)`, root device first.
    pub volumes: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
    /// RFC 3339.
    pub launch_time: String,
}

/// What every instance of the fleet shares.
#[derive(Debug, Clone)]
pub struct Common {
    pub image_id: String,
    pub instance_type: String,
    pub subnet_id: String,
    pub vpc_id: String,
}

struct Fleet {
    common: Common,
    by_id: HashMap<String, SimInstance>,
    /// Instances by `(tag key, tag value)`, for tag filters.
    by_tag: HashMap<(String, String), Vec<String>>,
}

/// Which ids were listed since [`Ec2Sim::watch_answers`], and when the last
/// of them first was.
#[derive(Default)]
struct Answered {
    ids: HashSet<String>,
    all_at: Option<Instant>,
}

struct State {
    fleet: Fleet,
    latency: Duration,
    answered: Mutex<Answered>,
}

/// A running simulator on 127.0.0.1; dropping it stops it.
pub struct Ec2Sim {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for Ec2Sim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Ec2Sim {
    pub async fn start(common: Common, instances: Vec<SimInstance>, latency: Duration) -> Ec2Sim {
        let mut by_tag: HashMap<(String, String), Vec<String>> = HashMap::new();
        for i in &instances {
            for (k, v) in &i.tags {
                by_tag
                    .entry((k.clone(), v.clone()))
                    .or_default()
                    .push(i.id.clone());
            }
        }
        let by_id = instances.into_iter().map(|i| (i.id.clone(), i)).collect();
        let state = Arc::new(State {
            fleet: Fleet {
                common,
                by_id,
                by_tag,
            },
            latency,
            answered: Mutex::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("EC2 simulator: binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("EC2 simulator: local address");
        let task = tokio::spawn(serve(listener, state.clone()));
        Ec2Sim { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts recording which instances are listed, afresh.
    pub fn watch_answers(&self) {
        *self.state.answered.lock().unwrap() = Answered::default();
    }

    /// How many distinct instances were listed since [`Ec2Sim::watch_answers`],
    /// and when the whole fleet first had been.
    pub fn answered(&self) -> (usize, Option<Instant>) {
        let a = self.state.answered.lock().unwrap();
        (a.ids.len(), a.all_at)
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let parsed = ParsedRequest::parse(parts.uri.query(), &body);
    tokio::time::sleep(state.latency).await;
    if parsed.action != "DescribeInstances" {
        return Ok(error_response(
            400,
            "UnsupportedOperation",
            &format!("the EC2 simulator does not answer {}", parsed.action),
            0,
        ));
    }
    Ok(match describe(&state, &parsed.params) {
        Ok(xml) => {
            let mut response = Response::new(full(Bytes::from(xml)));
            set_headers(&mut response, 0);
            response
        }
        Err((code, message)) => error_response(400, code, &message, 0),
    })
}

/// `Filter.N.Name` and `Filter.N.Value.M`, by N.
fn filters(params: &[(String, String)]) -> Vec<(String, Vec<String>)> {
    let mut by_n: BTreeMap<u32, (String, Vec<String>)> = BTreeMap::new();
    for (k, v) in params {
        let Some(rest) = k.strip_prefix("Filter.") else {
            continue;
        };
        let Some((n, field)) = rest.split_once('.') else {
            continue;
        };
        let Ok(n) = n.parse() else { continue };
        let entry = by_n.entry(n).or_default();
        if field == "Name" {
            entry.0 = v.clone();
        } else if field.starts_with("Value.") {
            entry.1.push(v.clone());
        }
    }
    by_n.into_values().collect()
}

fn matches(i: &SimInstance, name: &str, values: &[String]) -> Result<bool, String> {
    if name == "instance-id" {
        return Ok(values.contains(&i.id));
    }
    if name == "instance-state-name" {
        return Ok(values.iter().any(|v| v == "running"));
    }
    if let Some(key) = name.strip_prefix("tag:") {
        return Ok(i.tags.iter().any(|(k, v)| k == key && values.contains(v)));
    }
    Err(format!("The filter '{name}' is invalid"))
}

fn describe(state: &State, params: &[(String, String)]) -> Result<String, (&'static str, String)> {
    let fleet = &state.fleet;
    let named: Vec<&String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("InstanceId."))
        .map(|(_, v)| v)
        .collect();
    let filters = filters(params);
    let candidates: Vec<&SimInstance> = if !named.is_empty() {
        let unknown: Vec<&str> = named
            .iter()
            .filter(|id| !fleet.by_id.contains_key(id.as_str()))
            .map(|id| id.as_str())
            .collect();
        match unknown.as_slice() {
            [] => {}
            [one] => {
                return Err((
                    "InvalidInstanceID.NotFound",
                    format!("The instance ID '{one}' does not exist"),
                ));
            }
            many => {
                return Err((
                    "InvalidInstanceID.NotFound",
                    format!("The instance IDs '{}' do not exist", many.join(", ")),
                ));
            }
        }
        named.iter().filter_map(|id| fleet.by_id.get(*id)).collect()
    } else if let Some((_, ids)) = filters.iter().find(|(n, _)| n == "instance-id") {
        ids.iter().filter_map(|id| fleet.by_id.get(id)).collect()
    } else if let Some((key, values)) = filters
        .iter()
        .find_map(|(n, v)| Some((n.strip_prefix("tag:")?, v)))
    {
        let mut seen = HashSet::new();
        values
            .iter()
            .filter_map(|v| fleet.by_tag.get(&(key.to_owned(), v.clone())))
            .flatten()
            .filter(|id| seen.insert(*id))
            .filter_map(|id| fleet.by_id.get(id))
            .collect()
    } else {
        fleet.by_id.values().collect()
    };
    let mut listed = Vec::with_capacity(candidates.len());
    for i in candidates {
        let mut keep = true;
        for (name, values) in &filters {
            keep &= matches(i, name, values).map_err(|m| ("InvalidParameterValue", m))?;
        }
        if keep {
            listed.push(i);
        }
    }
    {
        let mut answered = state.answered.lock().unwrap();
        for i in &listed {
            answered.ids.insert(i.id.clone());
        }
        if answered.all_at.is_none() && answered.ids.len() == fleet.by_id.len() {
            answered.all_at = Some(Instant::now());
        }
    }
    let mut xml = String::with_capacity(256 + listed.len() * 3000);
    xml.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
         <requestId>0f8e2a51-9c1b-4a4e-8d6e-000000000000</requestId><reservationSet>",
    );
    for i in listed {
        instance_xml(&mut xml, &fleet.common, i);
    }
    xml.push_str("</reservationSet></DescribeInstancesResponse>");
    Ok(xml)
}

/// One reservation with one instance, with the fields a real answer about a
/// running instance carries.
fn instance_xml(xml: &mut String, c: &Common, i: &SimInstance) {
    let suffix = i.id.trim_start_matches("i-");
    let ip = {
        let n = u32::from_str_radix(&suffix[suffix.len().saturating_sub(4)..], 16).unwrap_or(0);
        format!("10.0.{}.{}", (n >> 8) & 0xff, n & 0xff)
    };
    let _ = write!(
        xml,
        "<item><reservationId>r-{suffix}</reservationId><ownerId>123456789012</ownerId>\
         <groupSet/><instancesSet><item>\
         <instanceId>{id}</instanceId><imageId>{image}</imageId>\
         <instanceState><code>16</code><name>running</name></instanceState>\
         <privateDnsName>ip-{dash}.ec2.internal</privateDnsName><dnsName/>\
         <reason/><amiLaunchIndex>0</amiLaunchIndex><productCodes/>\
         <instanceType>{itype}</instanceType><launchTime>{launch}</launchTime>\
         <placement><availabilityZone>{zone}</availabilityZone><groupName/><tenancy>default</tenancy></placement>\
         <monitoring><state>disabled</state></monitoring>\
         <subnetId>{subnet}</subnetId><vpcId>{vpc}</vpcId><privateIpAddress>{ip}</privateIpAddress>\
         <sourceDestCheck>true</sourceDestCheck>\
         <groupSet><item><groupId>sg-0a1b2c3d4e5f60718</groupId><groupName>default</groupName></item></groupSet>\
         <architecture>x86_64</architecture><rootDeviceType>ebs</rootDeviceType>\
         <rootDeviceName>/dev/xvda</rootDeviceName><blockDeviceMapping>",
        id = i.id,
        image = c.image_id,
        dash = ip.replace('.', "-"),
        itype = c.instance_type,
        launch = i.launch_time,
        zone = i.zone,
        subnet = c.subnet_id,
        vpc = c.vpc_id,
    );
    for (device, volume) in &i.volumes {
        let _ = write!(
            xml,
            "<item><deviceName>{device}</deviceName><ebs><volumeId>{volume}</volumeId>\
             <status>attached</status><attachTime>{launch}</attachTime>\
             <deleteOnTermination>{delete}</deleteOnTermination></ebs></item>",
            launch = i.launch_time,
            delete = device == "/dev/xvda",
        );
    }
    let _ = write!(
        xml,
        "</blockDeviceMapping><virtualizationType>hvm</virtualizationType>\
         <clientToken/><tagSet>"
    );
    for (k, v) in &i.tags {
        let _ = write!(
            xml,
            "<item><key>{}</key><value>{}</value></item>",
            xml_escape(k),
            xml_escape(v)
        );
    }
    let _ = write!(
        xml,
        "</tagSet><hypervisor>xen</hypervisor>\
         <networkInterfaceSet><item><networkInterfaceId>eni-{suffix}</networkInterfaceId>\
         <subnetId>{subnet}</subnetId><vpcId>{vpc}</vpcId><ownerId>123456789012</ownerId>\
         <status>in-use</status><privateIpAddress>{ip}</privateIpAddress>\
         <sourceDestCheck>true</sourceDestCheck>\
         <attachment><attachmentId>eni-attach-{suffix}</attachmentId><deviceIndex>0</deviceIndex>\
         <status>attached</status><attachTime>{launch}</attachTime>\
         <deleteOnTermination>true</deleteOnTermination></attachment>\
         <privateIpAddressesSet><item><privateIpAddress>{ip}</privateIpAddress>\
         <primary>true</primary></item></privateIpAddressesSet></item></networkInterfaceSet>\
         <ebsOptimized>false</ebsOptimized><enaSupport>true</enaSupport>\
         <cpuOptions><coreCount>1</coreCount><threadsPerCore>2</threadsPerCore></cpuOptions>\
         <hibernationOptions><configured>false</configured></hibernationOptions>\
         <metadataOptions><state>applied</state><httpTokens>required</httpTokens>\
         <httpPutResponseHopLimit>2</httpPutResponseHopLimit><httpEndpoint>enabled</httpEndpoint></metadataOptions>\
         <enclaveOptions><enabled>false</enabled></enclaveOptions>\
         <platformDetails>Linux/UNIX</platformDetails><usageOperation>RunInstances</usageOperation>\
         <bootMode>uefi-preferred</bootMode><currentInstanceBootMode>legacy-bios</currentInstanceBootMode>\
         </item></instancesSet></item>",
        subnet = c.subnet_id,
        vpc = c.vpc_id,
        launch = i.launch_time,
    );
}
