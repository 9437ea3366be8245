// Command etcd is upstream etcd v3.6.5 (go.etcd.io/etcd/server/v3/etcdmain),
// built from the Go module proxy for the integration bed.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
