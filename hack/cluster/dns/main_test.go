package main

import (
	"net/netip"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

func query(t *testing.T, name string, typ dnsmessage.Type) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, RecursionDesired: true})
	b.StartQuestions()
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	out, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAnswer(t *testing.T) {
	z := &zone{suffix: "svc.cluster.local.", names: map[string][]netip.Addr{
		"s-0.shards.data.svc.cluster.local.": {netip.MustParseAddr("10.244.0.12")},
	}}
	for _, tc := range []struct {
		name  string
		typ   dnsmessage.Type
		rcode dnsmessage.RCode
		as    int
	}{
		{"S-0.shards.data.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, 1},
		{"s-0.shards.data.svc.cluster.local.", dnsmessage.TypeAAAA, dnsmessage.RCodeSuccess, 0},
		{"s-1.shards.data.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeNameError, 0},
		{"example.com.", dnsmessage.TypeA, dnsmessage.RCodeRefused, 0},
	} {
		out, err := z.answer(query(t, tc.name, tc.typ))
		if err != nil {
			t.Fatal(err)
		}
		var m dnsmessage.Message
		if err := m.Unpack(out); err != nil {
			t.Fatal(err)
		}
		if m.Header.ID != 7 || !m.Header.Response || m.Header.RCode != tc.rcode || len(m.Answers) != tc.as {
			t.Errorf("%s %v: %+v, %d answers; want %v, %d", tc.name, tc.typ, m.Header, len(m.Answers), tc.rcode, tc.as)
		}
		if tc.as == 1 && m.Answers[0].Body.(*dnsmessage.AResource).A != [4]byte{10, 244, 0, 12} {
			t.Errorf("answer %v", m.Answers[0].Body)
		}
	}
	if _, err := z.answer([]byte{1, 2, 3}); err == nil {
		t.Error("a 3-byte packet was answered")
	}
}
