//! Which resource each device is advertised under (`--afu-resource`): a pure function of the devices and the
//! configuration, between discovery and the registries. Without any `--afu-resource` every device goes to
//! the one default resource, as before.

use crate::device::Device;
use std::collections::{BTreeMap, BTreeSet};

/// The routing configuration, from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routes {
    /// `--resource-name`: the ports no entry names (unless `auto`), ports with a blank AFU, AWS units.
    pub default: String,
    /// Canonical AFU ID (32 lowercase hex digits) → resource name.
    pub by_afu: BTreeMap<String, String>,
    /// With `--afu-resource auto`: the domain of the default resource, for `<domain>/afu-<AFU ID>`.
    pub auto_domain: Option<String>,
}

impl Routes {
    /// `afu_resources`: (NAME, canonical AFU ID) pairs, each AFU ID once (the command line checks it).
    pub fn new(default: &str, afu_resources: &[(String, String)], auto: bool) -> Routes {
        Routes {
            default: default.to_string(),
            by_afu: afu_resources.iter().map(|(name, id)| (id.clone(), name.clone())).collect(),
            auto_domain: auto.then(|| default.split_once('/').map_or(default, |(domain, _)| domain).to_string()),
        }
    }

    /// Only the default resource: no `--afu-resource` at all.
    pub fn single(default: &str) -> Routes {
        Routes::new(default, &[], false)
    }

    /// The resources registered at start, whatever is found: the default and every named one.
    pub fn fixed(&self) -> BTreeSet<String> {
        std::iter::once(self.default.clone()).chain(self.by_afu.values().cloned()).collect()
    }

    /// The resource a device is advertised under.
    pub fn resource_of(&self, device: &Device) -> String {
        let Some(afu) = &device.afu_id else { return self.default.clone() };
        match (self.by_afu.get(afu), &self.auto_domain) {
            (Some(name), _) => name.clone(),
            (None, Some(domain)) => format!("{domain}/afu-{afu}"),
            (None, None) => self.default.clone(),
        }
    }

    /// Devices grouped by resource. Every resource in `known` is in the result, with an empty list if no
    /// device goes there (a resource stays registered once it was); resources seen for the first time (auto
    /// names of new AFUs) are added to `known`.
    pub fn route(&self, devices: Vec<Device>, known: &mut BTreeSet<String>) -> BTreeMap<String, Vec<Device>> {
        let mut out: BTreeMap<String, Vec<Device>> = known.iter().map(|r| (r.clone(), Vec::new())).collect();
        for device in devices {
            let resource = self.resource_of(&device);
            known.insert(resource.clone());
            out.entry(resource).or_default().push(device);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Health;

    fn port(id: &str, afu: Option<&str>) -> Device {
        Device {
            id: id.into(),
            health: Health::Healthy,
            numa_node: None,
            nodes: Vec::new(),
            pci_address: None,
            afu_id: afu.map(str::to_string),
        }
    }

    const GZIP: &str = "d8424dc4a4a3c413f89e433683f9040b";
    const NET: &str = "00112233445566778899aabbccddeeff";

    fn ids(routed: &BTreeMap<String, Vec<Device>>) -> Vec<(String, Vec<String>)> {
        routed.iter().map(|(r, d)| (r.clone(), d.iter().map(|d| d.id.clone()).collect())).collect()
    }

    #[test]
    fn without_entries_everything_is_the_default_resource() {
        let routes = Routes::single("b-com.com/accelerator");
        let mut known = routes.fixed();
        let routed = routes.route(vec![port("a", Some(GZIP)), port("b", None)], &mut known);
        assert_eq!(ids(&routed), [("b-com.com/accelerator".to_string(), vec!["a".to_string(), "b".to_string()])]);
    }

    #[test]
    fn named_auto_and_default() {
        let named = [("example.com/gzip".to_string(), GZIP.to_string())];
        let routes = Routes::new("b-com.com/accelerator", &named, true);
        let mut known = routes.fixed();
        let routed = routes.route(vec![port("a", Some(GZIP)), port("b", Some(NET)), port("c", None)], &mut known);
        assert_eq!(
            ids(&routed),
            [
                ("b-com.com/accelerator".to_string(), vec!["c".to_string()]),
                (format!("b-com.com/afu-{NET}"), vec!["b".to_string()]),
                ("example.com/gzip".to_string(), vec!["a".to_string()]),
            ]
        );
        // The auto resource stays, empty, when its AFU goes; named ones are there from the start.
        let routed = routes.route(vec![port("b", Some(GZIP))], &mut known);
        assert_eq!(routed[&format!("b-com.com/afu-{NET}")].len(), 0);
        assert_eq!(routed["example.com/gzip"].len(), 1);
        // Without auto, unnamed AFUs stay in the default resource.
        let routes = Routes::new("b-com.com/accelerator", &named, false);
        assert_eq!(routes.resource_of(&port("b", Some(NET))), "b-com.com/accelerator");
        assert_eq!(routes.fixed().len(), 2);
    }
}
