// Package shardrollout decides the next step of a DataPlane's shard-server
// rollout: which shard-server pod, if any, may be restarted now so that the
// pods reach their StatefulSet's new revision one at a time and no ECVolume
// loses its journal's write quorum.
//
// The shard-server StatefulSets use updateStrategy OnDelete: a changed
// template restarts nothing by itself. The operator deletes one outdated pod
// at a time (the StatefulSet controller recreates it at the new revision)
// and only when
//   - every other shard server of the DataPlane is Ready and registered
//     (a live Lease renewed by its current pod), so at most one is down;
//   - the replaced one before it is back (it is one of "every other");
//   - for every ECVolume with a journal replica on the server's pool, the
//     replicas on other pools with a live shard server still form a
//     majority of the journal's replicas (outdated servers whose restart
//     would break that wait; the first one in name order that is safe goes).
//
// A server that is already down and outdated may be restarted while all
// others are up: restarting it takes nothing more away (a broken revision
// can be fixed by the next one).
//
// Everything the rule needs is read from the cluster each time (revisions,
// readiness, Leases, the journal annotations), so a restarted operator
// resumes where the last one stopped. The package is pure: no client, no
// clock; the controller gathers the inputs.
package shardrollout

import (
	"fmt"
	"sort"
	"strings"
)

// Server is one shard server of the DataPlane: its StatefulSet and its pod.
type Server struct {
	// StatefulSet is the StatefulSet's name.
	StatefulSet string
	// Pool is the DiskPool the server serves (its registry key).
	Pool string
	// UpdateRevision is the StatefulSet's status.updateRevision; empty or
	// Observed false while the StatefulSet controller has not seen the
	// latest spec.
	UpdateRevision string
	Observed       bool
	// Pod is the StatefulSet's pod, nil when there is none.
	Pod *Pod
}

// Pod is the state of one shard-server pod.
type Pod struct {
	Name string
	// Revision is the pod's controller-revision-hash label.
	Revision string
	// Deleting: the pod has a deletionTimestamp.
	Deleting bool
	// Ready: the pod's Ready condition is True.
	Ready bool
	// Registered: its pool's Lease is live and was acquired by this pod.
	Registered bool
}

// Journal is one ECVolume's journal: the pools of its replicas.
type Journal struct {
	Volume string
	Pools  []string
}

// Input is what the rule decides on.
type Input struct {
	Servers  []Server
	Journals []Journal
	// Live are the pools with a live shard-server Lease in the registry
	// (every shard server, not only the DataPlane's).
	Live map[string]bool
}

// Action is what to do now.
type Action string

const (
	// UpToDate: every pod runs its StatefulSet's update revision.
	UpToDate Action = "UpToDate"
	// Wait: a restart is due but not safe now; Reason says why.
	Wait Action = "Wait"
	// Restart: delete Pod of StatefulSet now.
	Restart Action = "Restart"
)

// Decision is the rule's answer.
type Decision struct {
	Action Action
	// StatefulSet and Pod to restart (Restart only).
	StatefulSet, Pod string
	// Reason is for humans: the condition message and the Event.
	Reason string
	// Outdated counts the servers whose pod is not at the update revision
	// (or whose StatefulSet's revision is not yet known); Total the servers.
	Outdated, Total int
}

// up reports whether the server counts as serving.
func (s Server) up() bool {
	return s.Pod != nil && !s.Pod.Deleting && s.Pod.Ready && s.Pod.Registered
}

func (s Server) outdated() bool {
	return s.Pod != nil && s.Pod.Revision != s.UpdateRevision
}

// downReason says why a server does not count as serving.
func (s Server) downReason() string {
	switch {
	case s.Pod == nil:
		return fmt.Sprintf("shard server %s (pool %s) has no pod", s.StatefulSet, s.Pool)
	case s.Pod.Deleting:
		return fmt.Sprintf("pod %s (pool %s) is terminating", s.Pod.Name, s.Pool)
	case !s.Pod.Ready:
		return fmt.Sprintf("pod %s (pool %s) is not Ready", s.Pod.Name, s.Pool)
	default:
		return fmt.Sprintf("pod %s (pool %s) has not registered (no live Lease acquired by it)", s.Pod.Name, s.Pool)
	}
}

// Next decides the rollout's next step.
func Next(in Input) Decision {
	servers := append([]Server(nil), in.Servers...)
	sort.Slice(servers, func(i, j int) bool { return servers[i].StatefulSet < servers[j].StatefulSet })
	d := Decision{Total: len(servers)}
	var unobserved []string
	for _, s := range servers {
		if !s.Observed || s.UpdateRevision == "" {
			unobserved = append(unobserved, s.StatefulSet)
			d.Outdated++
		} else if s.outdated() {
			d.Outdated++
		}
	}
	if len(unobserved) > 0 {
		d.Action = Wait
		d.Reason = fmt.Sprintf("waiting for the StatefulSet controller to observe %s", strings.Join(unobserved, ", "))
		return d
	}
	var down []Server
	for _, s := range servers {
		if !s.up() {
			down = append(down, s)
		}
	}
	if d.Outdated == 0 {
		d.Action = UpToDate
		d.Reason = fmt.Sprintf("all %d shard servers run their StatefulSet's update revision", len(servers))
		if len(down) > 0 {
			var why []string
			for _, s := range down {
				why = append(why, s.downReason())
			}
			d.Reason += "; " + strings.Join(why, "; ")
		}
		return d
	}
	var cand *Server
	switch {
	case len(down) > 1:
		var why []string
		for _, s := range down {
			why = append(why, s.downReason())
		}
		d.Action = Wait
		d.Reason = fmt.Sprintf("%d of %d shard servers outdated; waiting: %d are down (%s), a restart is allowed only while every other shard server is Ready and registered",
			d.Outdated, len(servers), len(down), strings.Join(why, "; "))
		return d
	case len(down) == 1:
		s := down[0]
		if !s.outdated() || s.Pod.Deleting {
			d.Action = Wait
			d.Reason = fmt.Sprintf("%d of %d shard servers outdated; waiting for %s before the next restart", d.Outdated, len(servers), s.downReason())
			return d
		}
		cand = &s // already down: restarting it takes nothing more away
	default:
		// The first outdated server whose restart keeps every journal's
		// quorum; the others wait for theirs.
		var blocked []string
		for i := range servers {
			if !servers[i].outdated() {
				continue
			}
			if b := quorumBlocked(servers[i].Pool, in); b != "" {
				blocked = append(blocked, fmt.Sprintf("restarting pod %s (pool %s) now would cost a journal its write quorum: %s", servers[i].Pod.Name, servers[i].Pool, b))
				continue
			}
			cand = &servers[i]
			break
		}
		if cand == nil {
			d.Action = Wait
			d.Reason = fmt.Sprintf("%d of %d shard servers outdated; %s", d.Outdated, len(servers), strings.Join(blocked, "; "))
			return d
		}
	}
	d.Action = Restart
	d.StatefulSet, d.Pod = cand.StatefulSet, cand.Pod.Name
	d.Reason = fmt.Sprintf("%d of %d shard servers outdated; restarting pod %s (pool %s) to revision %s", d.Outdated, len(servers), cand.Pod.Name, cand.Pool, cand.UpdateRevision)
	return d
}

// quorumBlocked names the journals that would lose their write quorum if
// pool went down ("" if none).
func quorumBlocked(pool string, in Input) string {
	var out []string
	for _, j := range in.Journals {
		has := false
		live := 0
		for _, p := range j.Pools {
			if p == pool {
				has = true
			} else if in.Live[p] {
				live++
			}
		}
		if !has {
			continue
		}
		if quorum := len(j.Pools)/2 + 1; live < quorum {
			out = append(out, fmt.Sprintf("ECVolume %s (journal on pools %s) would keep %d live replicas, its quorum is %d",
				j.Volume, strings.Join(j.Pools, ","), live, quorum))
		}
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}
