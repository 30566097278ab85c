//! Answers to Allocate, PreStartContainer and GetPreferredAllocation, computed from a registry snapshot.
//! No I/O and no locks: everything the answers need was prepared by the scan.

use crate::api;
use crate::registry::Snapshot;
use std::collections::{BTreeMap, HashSet};

/// The environment variable that tells a container which units it was given.
pub const ENV_UNITS: &str = "ACCELERATOR_UNITS";

/// The environment variable that gives a container the PCI function of each unit it was given, in the
/// order of `ACCELERATOR_UNITS` (comma-separated canonical addresses, `0000:00:0f.0,0000:00:11.0`): the
/// application PFs of AWS FPGA slots, which the AWS SDK's tools and `/sys/bus/pci/devices` know them by.
/// Set only when the units have one (AWS slots).
pub const ENV_PCI_ADDRESSES: &str = "ACCELERATOR_PCI_ADDRESSES";

/// The longest environment string (`NAME=value` and its NUL) that Linux passes to a program: MAX_ARG_STRLEN,
/// 32 pages of 4 KiB. A container given a longer `ACCELERATOR_UNITS` could not start (execve fails E2BIG).
pub const MAX_ENV_STRING: usize = 32 * 4096;

/// The length of `ACCELERATOR_UNITS=<ids joined by commas>` with its NUL, in bytes.
pub fn env_string_len<S: AsRef<str>>(ids: &[S]) -> usize {
    ENV_UNITS.len() + 1 + ids.iter().map(|id| id.as_ref().len()).sum::<usize>() + ids.len().saturating_sub(1) + 1
}

/// When the advertised devices are so many that one container given all of them could not start, the
/// largest number of them one container can surely be given (its shortest IDs fill the string last).
pub fn most_units_per_container(ids: &[&str]) -> Option<usize> {
    if env_string_len(ids) <= MAX_ENV_STRING {
        return None;
    }
    let mut lengths: Vec<usize> = ids.iter().map(|id| id.len()).collect();
    lengths.sort_unstable_by(|a, b| b.cmp(a));
    let mut total = ENV_UNITS.len() + 1 + 1;
    Some(
        lengths
            .iter()
            .take_while(|&&len| {
                total += len + 1;
                total - 1 <= MAX_ENV_STRING
            })
            .count(),
    )
}

/// A request the kubelet should not have sent; it becomes an INVALID_ARGUMENT status.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidRequest(pub String);

impl std::fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Quotes an ID from a request for an error message, bounded so that a hostile ID cannot bloat the reply.
fn quoted(id: &str) -> String {
    const MAX: usize = 80;
    if id.len() <= MAX {
        format!("{id:?}")
    } else {
        let mut end = MAX;
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}… ({} bytes)", &id[..end], id.len())
    }
}

/// Every ID must be known, healthy, and requested once across the whole request.
pub fn validate<'a>(snapshot: &Snapshot, ids: impl IntoIterator<Item = &'a String>) -> Result<(), InvalidRequest> {
    let mut seen = HashSet::new();
    for id in ids {
        match snapshot.get(id) {
            None => return Err(InvalidRequest(format!("unknown device ID {}", quoted(id)))),
            Some(d) if !d.health.is_healthy() => {
                return Err(InvalidRequest(format!("device {} is Unhealthy", quoted(id))))
            }
            Some(_) => {}
        }
        if !seen.insert(id.as_str()) {
            return Err(InvalidRequest(format!("device {} is requested more than once", quoted(id))));
        }
    }
    Ok(())
}

/// One response per container, in request order: `ACCELERATOR_UNITS` and the containers' device nodes,
/// either as DeviceSpecs or, with `cdi_kind` (the resource name, when `--cdi-spec-dir` is set), as CDI
/// devices `<kind>=<ID>` described by the spec file (never both: each node would be injected twice).
pub fn allocate(
    snapshot: &Snapshot,
    req: &api::AllocateRequest,
    cdi_kind: Option<&str>,
) -> Result<api::AllocateResponse, InvalidRequest> {
    validate(snapshot, req.container_requests.iter().flat_map(|c| c.devices_ids.iter()))?;
    let mut resp = api::AllocateResponse::new();
    for container in &req.container_requests {
        let mut c = api::ContainerAllocateResponse::new();
        let units = container.devices_ids.join(",");
        let env_len = env_string_len(&container.devices_ids);
        if env_len > MAX_ENV_STRING {
            return Err(InvalidRequest(format!(
                "{} devices for one container make {ENV_UNITS} {env_len} bytes long, more than the {MAX_ENV_STRING} \
                 bytes Linux passes to a program: the container could not start",
                container.devices_ids.len()
            )));
        }
        c.envs.insert(ENV_UNITS.to_string(), units);
        let devices: Vec<&crate::device::Device> =
            container.devices_ids.iter().filter_map(|id| snapshot.get(id)).collect();
        let addresses: Vec<&str> = devices.iter().filter_map(|d| d.pci_address.as_deref()).collect();
        if !addresses.is_empty() {
            c.envs.insert(ENV_PCI_ADDRESSES.to_string(), addresses.join(","));
        }
        for d in devices.iter().filter(|d| crate::cdi::is_cdi_device(d)) {
            if let Some(kind) = cdi_kind {
                let mut cdi = api::CDIDevice::new();
                cdi.name = crate::cdi::device_name(kind, &d.id);
                c.cdi_devices.push(cdi);
                continue;
            }
            for node in &d.nodes {
                let mut spec = api::DeviceSpec::new();
                spec.container_path = node.container_path.clone();
                spec.host_path = node.host_path.clone();
                spec.permissions = "rw".to_string();
                c.devices.push(spec);
            }
        }
        resp.container_responses.push(c);
    }
    Ok(resp)
}

/// Per container: exactly `allocation_size` IDs (fewer only if fewer are available), `must_include` first,
/// then the best of `available`: devices on the NUMA nodes of `must_include`, else on the NUMA node with
/// the most available devices, then the other nodes by the same rule, then devices without a NUMA node.
/// Ties are broken by ID (shorter first, so `2` comes before `10`), which makes the answer deterministic
/// whatever order the kubelet lists the IDs in. An ID this resource does not advertise (unknown, or another
/// resource's) is refused, as in Allocate: the kubelet only offers IDs from this resource's own list.
pub fn preferred(
    snapshot: &Snapshot,
    req: &api::PreferredAllocationRequest,
) -> Result<api::PreferredAllocationResponse, InvalidRequest> {
    for id in req.container_requests.iter().flat_map(|c| c.must_include_deviceIDs.iter().chain(&c.available_deviceIDs))
    {
        if snapshot.get(id).is_none() {
            return Err(InvalidRequest(format!("unknown device ID {}", quoted(id))));
        }
    }
    let mut resp = api::PreferredAllocationResponse::new();
    for container in &req.container_requests {
        let size = usize::try_from(container.allocation_size)
            .map_err(|_| InvalidRequest(format!("allocation_size {} is negative", container.allocation_size)))?;
        let numa = |id: &str| snapshot.get(id).and_then(|d| d.numa_node);

        let mut chosen: Vec<String> = Vec::new();
        let mut taken: HashSet<&str> = HashSet::new();
        for id in &container.must_include_deviceIDs {
            if chosen.len() < size && taken.insert(id) {
                chosen.push(id.clone());
            }
        }
        let wanted_nodes: HashSet<i64> = chosen.iter().filter_map(|id| numa(id)).collect();

        let mut candidates: Vec<&str> = Vec::new();
        for id in &container.available_deviceIDs {
            if taken.insert(id) {
                candidates.push(id);
            }
        }
        let mut per_node: BTreeMap<i64, usize> = BTreeMap::new();
        for id in &candidates {
            if let Some(n) = numa(id) {
                *per_node.entry(n).or_default() += 1;
            }
        }
        // Rank of a node: wanted nodes first, then by available count (more first), then by node number.
        let rank = |node: Option<i64>| -> (u8, usize, i64) {
            match node {
                Some(n) if wanted_nodes.contains(&n) => (0, usize::MAX - per_node[&n], n),
                Some(n) => (1, usize::MAX - per_node[&n], n),
                None => (2, 0, 0),
            }
        };
        candidates.sort_by_key(|id| (rank(numa(id)), id.len(), *id));
        let missing = size.saturating_sub(chosen.len());
        chosen.extend(candidates.into_iter().take(missing).map(str::to_owned));

        let mut c = api::ContainerPreferredAllocationResponse::new();
        c.deviceIDs = chosen;
        resp.container_responses.push(c);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{Device, Health};
    use crate::registry::Registry;

    fn snapshot(devs: &[(&str, Option<i64>)]) -> std::sync::Arc<Snapshot> {
        let mut r = Registry::default();
        r.update(
            devs.iter()
                .map(|(id, n)| Device {
                    id: id.to_string(),
                    health: Health::Healthy,
                    numa_node: *n,
                    nodes: Vec::new(),
                    pci_address: None,
                    afu_id: None,
                })
                .collect(),
        );
        r.snapshot()
    }

    fn ask(s: &Snapshot, avail: &[&str], must: &[&str], size: i32) -> Vec<String> {
        let mut c = api::ContainerPreferredAllocationRequest::new();
        c.available_deviceIDs = avail.iter().map(|s| s.to_string()).collect();
        c.must_include_deviceIDs = must.iter().map(|s| s.to_string()).collect();
        c.allocation_size = size;
        let mut req = api::PreferredAllocationRequest::new();
        req.container_requests.push(c);
        preferred(s, &req).unwrap().container_responses[0].deviceIDs.clone()
    }

    #[test]
    fn preferred_follows_numa_of_must_include_then_biggest_node() {
        let s = snapshot(&[
            ("a0", Some(0)),
            ("b0", Some(0)),
            ("a1", Some(1)),
            ("b1", Some(1)),
            ("c1", Some(1)),
            ("x", None),
        ]);
        let all = ["x", "c1", "b1", "a1", "b0", "a0"];
        assert_eq!(ask(&s, &all, &["b0"], 2), ["b0", "a0"]);
        assert_eq!(ask(&s, &all, &[], 2), ["a1", "b1"]);
        assert_eq!(ask(&s, &all, &[], 5), ["a1", "b1", "c1", "a0", "b0"]);
        assert_eq!(ask(&s, &all, &[], 9).len(), 6);
        assert_eq!(ask(&s, &all, &["x"], 1), ["x"]);
        // Input order does not matter.
        let mut rev = all;
        rev.reverse();
        assert_eq!(ask(&s, &rev, &[], 3), ask(&s, &all, &[], 3));
    }

    #[test]
    fn an_environment_string_longer_than_linux_passes_is_refused() {
        let ids: Vec<String> = (0..30_000).map(|i| i.to_string()).collect();
        let s = snapshot(&ids.iter().map(|id| (id.as_str(), None)).collect::<Vec<_>>());
        let request = |n: usize| {
            let mut c = api::ContainerAllocateRequest::new();
            c.devices_ids = ids[..n].to_vec();
            let mut req = api::AllocateRequest::new();
            req.container_requests.push(c);
            req
        };
        // 0..=21845 joined with commas is 119,965 bytes: fits. All 30,000 make 168,889: does not.
        let ok = allocate(&s, &request(21_846), None).unwrap();
        assert!(ok.container_responses[0].envs[ENV_UNITS].len() + ENV_UNITS.len() + 2 <= MAX_ENV_STRING);
        let e = allocate(&s, &request(30_000), None).unwrap_err();
        assert!(e.0.contains("30000 devices") && e.0.contains("131072"), "{e}");
        // What the scan reports: any container of this many units fits, even of the longest IDs.
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let most = most_units_per_container(&id_refs).unwrap();
        let longest: Vec<&str> = id_refs.iter().rev().take(most).copied().collect();
        assert!(env_string_len(&longest) <= MAX_ENV_STRING);
        let one_more: Vec<&str> = id_refs.iter().rev().take(most + 1).copied().collect();
        assert!(env_string_len(&one_more) > MAX_ENV_STRING);
        assert_eq!(most_units_per_container(&id_refs[..1000]), None);
    }

    #[test]
    fn aws_style_ids_sort_numerically() {
        let s = snapshot(&[("0", None), ("1", None), ("2", None), ("10", None)]);
        assert_eq!(ask(&s, &["10", "2", "1", "0"], &["10"], 3), ["10", "0", "1"]);
    }
}
