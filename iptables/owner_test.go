package iptables

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/uproxy/uproxy/svc"
)

// TestOwnershipNewestWrites: a second instance takes the rules over (the
// first one's syncs write nothing), and when it goes away the first one
// takes them back and writes its last desired portals at once.
func TestOwnershipNewestWrites(t *testing.T) {
	ctx := context.Background()
	cfg := baseConfig()
	cfg.OwnerSocket = fmt.Sprintf("@uproxy-test-owner-%d-%d", os.Getpid(), time.Now().UnixNano())
	old, rOld, _ := newTestProgrammer(t, cfg)
	oldCtx, cancelOld := context.WithCancel(ctx)
	defer old.ownerWG.Wait()
	defer cancelOld()
	if err := old.TakeOwnership(oldCtx); err != nil {
		t.Fatal(err)
	}
	if err := old.SyncPortals(ctx, []svc.Portal{web(30001)}); err != nil || len(rOld.restoresSnapshot()) != 2 {
		t.Fatalf("owner's sync: %v, %d restores", err, len(rOld.restoresSnapshot()))
	}

	newer, rNew, _ := newTestProgrammer(t, cfg)
	newCtx, cancelNew := context.WithCancel(ctx)
	if err := newer.TakeOwnership(newCtx); err != nil {
		t.Fatal(err)
	}
	// A service created during the overlap: only the newer one writes.
	both := []svc.Portal{web(30001), web(30002, func(p *svc.Port) { p.Name.Name = "new"; p.ClusterIPs = addrs("10.96.0.11") })}
	if err := old.SyncPortals(ctx, both); err != nil || len(rOld.restoresSnapshot()) != 2 {
		t.Fatalf("yielded instance wrote: %v, %d restores", err, len(rOld.restoresSnapshot()))
	}
	if err := newer.SyncPortals(ctx, both); err != nil || len(rNew.restoresSnapshot()) == 0 {
		t.Fatalf("new owner's sync: %v, %d restores", err, len(rNew.restoresSnapshot()))
	}

	// The newer one goes away: the old one writes its desired portals.
	cancelNew()
	newer.ownerWG.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for len(rOld.restoresSnapshot()) == 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(rOld.restoresSnapshot()); n == 2 {
		t.Fatal("the old instance never took the rules back")
	}
	rOld.mu.Lock()
	defer rOld.mu.Unlock()
	if got := rOld.state[v4].chains[tableNAT][chainPortalsContainer]; len(got) != 2 {
		t.Errorf("after taking the rules back: %q", got)
	}
}
