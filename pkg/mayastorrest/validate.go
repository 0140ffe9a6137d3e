package mayastorrest

import (
	"encoding/json"
	"fmt"
)

// The presence types mirror the shapes with pointers for the fields the spec
// marks required (and the operator relies on), so that an answer missing one
// is an error naming it instead of a silent zero. They are decoded from the
// same bytes as the typed answer.

type presentVolume struct {
	Spec *struct {
		UUID        *string `json:"uuid"`
		Size        *int64  `json:"size"`
		NumReplicas *uint8  `json:"num_replicas"`
		Status      *string `json:"status"`
	} `json:"spec"`
	State *struct {
		UUID            *string                    `json:"uuid"`
		Size            *int64                     `json:"size"`
		Status          *string                    `json:"status"`
		ReplicaTopology *map[string]presentReplica `json:"replica_topology"`
		Target          *struct {
			Node     *string `json:"node"`
			State    *string `json:"state"`
			Children *[]struct {
				URI   *string `json:"uri"`
				State *string `json:"state"`
			} `json:"children"`
		} `json:"target"`
	} `json:"state"`
}

type presentReplica struct {
	State *string `json:"state"`
}

type presentPool struct {
	ID   *string `json:"id"`
	Spec *struct {
		ID     *string `json:"id"`
		Node   *string `json:"node"`
		Status *string `json:"status"`
	} `json:"spec"`
	State *struct {
		ID       *string `json:"id"`
		Node     *string `json:"node"`
		Status   *string `json:"status"`
		Capacity *int64  `json:"capacity"`
		Used     *int64  `json:"used"`
	} `json:"state"`
}

type presentNode struct {
	ID    *string `json:"id"`
	State *struct {
		ID     *string `json:"id"`
		Status *string `json:"status"`
	} `json:"state"`
}

// missing collects the first missing field's path.
type missing struct{ path string }

func (m *missing) need(ok bool, path string) {
	if !ok && m.path == "" {
		m.path = path
	}
}

func (m *missing) err() error {
	if m.path == "" {
		return nil
	}
	return fmt.Errorf("required field %s is missing", m.path)
}

func checkVolume(p presentVolume, at string, m *missing) {
	m.need(p.Spec != nil, at+"spec")
	m.need(p.State != nil, at+"state")
	if p.Spec != nil {
		m.need(p.Spec.UUID != nil && *p.Spec.UUID != "", at+"spec.uuid")
		m.need(p.Spec.Size != nil, at+"spec.size")
		m.need(p.Spec.NumReplicas != nil, at+"spec.num_replicas")
		m.need(p.Spec.Status != nil, at+"spec.status")
	}
	if s := p.State; s != nil {
		m.need(s.UUID != nil, at+"state.uuid")
		m.need(s.Size != nil, at+"state.size")
		m.need(s.Status != nil && *s.Status != "", at+"state.status")
		m.need(s.ReplicaTopology != nil, at+"state.replica_topology")
		if s.ReplicaTopology != nil {
			for id, r := range *s.ReplicaTopology {
				m.need(r.State != nil, fmt.Sprintf("%sstate.replica_topology[%s].state", at, id))
			}
		}
		if t := s.Target; t != nil {
			m.need(t.Node != nil, at+"state.target.node")
			m.need(t.State != nil, at+"state.target.state")
			m.need(t.Children != nil, at+"state.target.children")
			if t.Children != nil {
				for i, c := range *t.Children {
					m.need(c.URI != nil, fmt.Sprintf("%sstate.target.children[%d].uri", at, i))
					m.need(c.State != nil, fmt.Sprintf("%sstate.target.children[%d].state", at, i))
				}
			}
		}
	}
}

func validateVolume(body []byte) error {
	var p presentVolume
	if err := json.Unmarshal(body, &p); err != nil {
		return err
	}
	var m missing
	checkVolume(p, "", &m)
	return m.err()
}

func validateVolumes(body []byte) error {
	var p struct {
		Entries *[]presentVolume `json:"entries"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return err
	}
	var m missing
	m.need(p.Entries != nil, "entries")
	if p.Entries != nil {
		for i, v := range *p.Entries {
			checkVolume(v, fmt.Sprintf("entries[%d].", i), &m)
		}
	}
	return m.err()
}

func checkPool(p presentPool, at string, m *missing) {
	m.need(p.ID != nil && *p.ID != "", at+"id")
	m.need(p.Spec != nil || p.State != nil, at+"spec or "+at+"state")
	if s := p.Spec; s != nil {
		m.need(s.ID != nil, at+"spec.id")
		m.need(s.Node != nil, at+"spec.node")
		m.need(s.Status != nil, at+"spec.status")
	}
	if s := p.State; s != nil {
		m.need(s.ID != nil, at+"state.id")
		m.need(s.Node != nil, at+"state.node")
		m.need(s.Status != nil && *s.Status != "", at+"state.status")
		m.need(s.Capacity != nil, at+"state.capacity")
		m.need(s.Used != nil, at+"state.used")
	}
}

func validatePool(body []byte) error {
	var p presentPool
	if err := json.Unmarshal(body, &p); err != nil {
		return err
	}
	var m missing
	checkPool(p, "", &m)
	return m.err()
}

func validatePools(body []byte) error {
	var ps *[]presentPool
	if err := json.Unmarshal(body, &ps); err != nil {
		return err
	}
	var m missing
	m.need(ps != nil, "the pool array")
	if ps != nil {
		for i, p := range *ps {
			checkPool(p, fmt.Sprintf("[%d].", i), &m)
		}
	}
	return m.err()
}

func validateNodes(body []byte) error {
	var ns *[]presentNode
	if err := json.Unmarshal(body, &ns); err != nil {
		return err
	}
	var m missing
	m.need(ns != nil, "the node array")
	if ns != nil {
		for i, n := range *ns {
			at := fmt.Sprintf("[%d].", i)
			m.need(n.ID != nil && *n.ID != "", at+"id")
			if n.State != nil {
				m.need(n.State.ID != nil, at+"state.id")
				m.need(n.State.Status != nil && *n.State.Status != "", at+"state.status")
			}
		}
	}
	return m.err()
}
