module github.com/billyronks/couchestor/hack/cluster/dns

go 1.26.8

require golang.org/x/net v0.61.0
