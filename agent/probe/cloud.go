package probe

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// providerPattern is what a provider name may look like (the OverrideMatch.cloudProvider items).
var providerPattern = regexp.MustCompile(`^[a-z0-9-]+$`)

// ProviderFromID returns the scheme of node.spec.providerID (aws:///us-east-1a/i-0abc -> aws).
func ProviderFromID(providerID string) (string, bool) {
	scheme, _, ok := strings.Cut(providerID, "://")
	scheme = strings.ToLower(scheme)
	if !ok || !providerPattern.MatchString(scheme) || len(scheme) > 64 {
		return "", false
	}
	return scheme, true
}

// labelProviders are well-known labels that only one provider's managed nodes carry.
var labelProviders = []struct{ label, provider string }{
	{"eks.amazonaws.com/nodegroup", "aws"},
	{"eks.amazonaws.com/compute-type", "aws"},
	{"alpha.eksctl.io/cluster-name", "aws"},
	{"karpenter.k8s.aws/instance-family", "aws"},
	{"cloud.google.com/gke-nodepool", "gce"},
	{"cloud.google.com/gke-os-distribution", "gce"},
	{"kubernetes.azure.com/cluster", "azure"},
	{"kubernetes.azure.com/agentpool", "azure"},
	{"doks.digitalocean.com/node-pool", "digitalocean"},
	{"oke.oraclecloud.com/node.info.private_subnet", "oci"},
}

// azureAssetTag is the DMI chassis asset tag of Azure VMs (plain Hyper-V guests lack it).
const azureAssetTag = "7783-7084-3265-9085-8269-3286-77"

// cloud says which provider runs the node: from node.spec.providerID, then well-known labels, then
// DMI. None of them is a guess: each is a provider's own marking. Nothing found is Unknown.
func (p *Prober) cloud(in Inputs) v1alpha1.StringFact {
	if in.ProviderID != "" {
		if prov, ok := ProviderFromID(in.ProviderID); ok {
			return stringFact(prov, "node.spec.providerID "+in.ProviderID)
		}
	}
	for _, lp := range labelProviders {
		if _, ok := in.Labels[lp.label]; ok {
			return stringFact(lp.provider, "node label "+lp.label)
		}
	}
	vendor, vsrc, verr := p.readTrimmed("/sys/class/dmi/id/sys_vendor")
	product, _, _ := p.readTrimmed("/sys/class/dmi/id/product_name")
	if verr == nil {
		src := fmt.Sprintf("DMI %s %q, product_name %q", vsrc, vendor, product)
		switch {
		case vendor == "Amazon EC2":
			return stringFact("aws", src)
		case vendor == "Google" && product == "Google Compute Engine":
			return stringFact("gce", src)
		case vendor == "Microsoft Corporation":
			if tag, _, _ := p.readTrimmed("/sys/class/dmi/id/chassis_asset_tag"); tag == azureAssetTag {
				return stringFact("azure", src+", Azure chassis asset tag")
			}
		case vendor == "Alibaba Cloud":
			return stringFact("alibaba", src)
		case vendor == "DigitalOcean":
			return stringFact("digitalocean", src)
		case vendor == "Hetzner":
			return stringFact("hcloud", src)
		case product == "OpenStack Nova" || product == "OpenStack Compute":
			return stringFact("openstack", src)
		}
		return v1alpha1.StringFact{Error: fmt.Sprintf("no providerID, no known label, and %s names no known cloud", src)}
	}
	return v1alpha1.StringFact{Error: fmt.Sprintf("no providerID, no known label, and no DMI: %v", verr)}
}
