package mayastorrest

import (
	"net/url"
	"strings"
)

// ChildReplicaUUID is the replica uuid at the end of a nexus child URI
// (…?uuid=<replica uuid>), or "" if the URI has none.
func ChildReplicaUUID(uri string) string {
	i := strings.LastIndexByte(uri, '?')
	if i < 0 {
		return ""
	}
	q, err := url.ParseQuery(uri[i+1:])
	if err != nil {
		return ""
	}
	return q.Get("uuid")
}

// ReplicaSynced is MAYASTOR.md's sync predicate: the volume is Online and
// published (an unpublished volume does not rebuild, so nothing on it counts
// as synced); the replica's child-status is Online with no rebuild-progress
// (and healthy where the server sends it); the nexus has exactly num_replicas
// children, all Online.
func ReplicaSynced(v Volume, replica string) bool {
	if v.State.Status != "Online" || v.State.Target == nil {
		return false
	}
	r, ok := v.State.ReplicaTopology[replica]
	if !ok || r.ChildStatus == nil || *r.ChildStatus != "Online" || r.RebuildProgress != nil {
		return false
	}
	if r.Healthy != nil && !*r.Healthy {
		return false
	}
	ch := v.State.Target.Children
	if len(ch) != int(v.Spec.NumReplicas) {
		return false
	}
	for _, c := range ch {
		if c.State != "Online" {
			return false
		}
	}
	return true
}
