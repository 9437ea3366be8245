package bench

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/uproxy/uproxy/integration/bed"
)

const (
	coldServices  = 1000
	corevProtoTCP = corev1.ProtocolTCP
)

// selectorless is a ClusterIP service 80 → 8080 without a selector (its
// EndpointSlice is written by the bench).
func selectorless(name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
}

// benchControlPlane: coldServices services created while no uproxy runs,
// then uproxy started cold; then single services added with those present.
func benchControlPlane(t *testing.T, b *bed.Bed, res *Results) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	t.Cleanup(cancel)
	ns := b.Namespace(t, "bench-cp")
	d := bed.EchoDeployment("cp", 1, corev1.ContainerPort{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP})
	if _, err := b.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitDeployment(ctx, ns, "cp"); err != nil {
		t.Fatal(err)
	}
	_, podIP := podInfo(t, b, ns, "cp")
	client := b.NewClient(t)

	start := time.Now()
	ips := make([]string, coldServices)
	var wg sync.WaitGroup
	errs := make(chan error, coldServices)
	next := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				s, err := b.Client.CoreV1().Services(ns).Create(ctx, selectorless(fmt.Sprintf("svc-%04d", i)), metav1.CreateOptions{})
				if err != nil {
					errs <- err
					continue
				}
				ips[i] = s.Spec.ClusterIP
			}
		}()
	}
	for i := range coldServices {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("create services: %v", err)
	}
	t.Logf("%d services created in %v", coldServices, time.Since(start))

	c := &Control{Services: coldServices}
	if res.Control != nil {
		c.EndpointChange, c.EndpointAPI = res.Control.EndpointChange, res.Control.EndpointAPI
	}
	res.Control = c
	t0 := time.Now()
	b.StartUproxy(t, bed.UproxyOptions{MinSyncPeriod: time.Second, NoWait: true})
	err := bed.Poll(ctx, 10*time.Millisecond, func() (bool, error) {
		rules, err := b.NATRules(ctx)
		if err != nil {
			return false, nil // uproxy may not have created its chains yet
		}
		return PortalCount(rules, ns+"/svc-") >= coldServices, nil
	})
	if err != nil {
		t.Fatalf("portal rules never complete: %v", err)
	}
	last := net.JoinHostPort(ips[coldServices-1], "80")
	if err := bed.Poll(ctx, 0, func() (bool, error) { return dialOK(client, last, 20*time.Millisecond), nil }); err != nil {
		t.Fatalf("%s never accepted: %v", last, err)
	}
	c.Cold = time.Since(t0)
	t.Logf("cold start with %d services: %v", coldServices, c.Cold)
	res.Commands = append(res.Commands, fmt.Sprintf("# cold: %d selector-less services, then uproxy started; iptables-save -t nat polled every 10 ms until every portal is there, then a TCP connect to the last ClusterIP", coldServices))

	for i := range 5 {
		sleepCtx(ctx, 1500*time.Millisecond) // past --iptables-min-sync-period
		name := fmt.Sprintf("one-%d", i)
		if _, err := b.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, endpointSlice(name, podIP), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		s, err := b.Client.CoreV1().Services(ns).Create(ctx, selectorless(name), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		addr := net.JoinHostPort(s.Spec.ClusterIP, "80")
		pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err = bed.Poll(pctx, 0, func() (bool, error) { return helloOK(client, addr, 5*time.Millisecond), nil })
		cancel()
		if err != nil {
			t.Fatalf("service %s (%s) never answered: %v", name, addr, err)
		}
		d := time.Since(t0)
		t.Logf("service %s added with %d present: answering after %v", name, coldServices+i, d)
		c.AddOne = append(c.AddOne, d)
	}
	res.Commands = append(res.Commands, "# add one: EndpointSlice first, then time from Services.Create to the first HTTP 200 through the new ClusterIP (connect timeout 5 ms per probe)")
}

// dialOK reports whether a TCP connect from the client namespace succeeds.
func dialOK(c *bed.Client, addr string, timeout time.Duration) bool {
	var conn net.Conn
	err := c.NS.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}

// helloOK reports whether an HTTP GET / through addr answers 200.
func helloOK(c *bed.Client, addr string, connectTimeout time.Duration) bool {
	var conn net.Conn
	err := c.NS.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, connectTimeout)
		return err
	})
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		return false
	}
	buf := make([]byte, 64)
	n, _ := conn.Read(buf)
	return strings.HasPrefix(string(buf[:n]), "HTTP/1.0 200") || strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200")
}
