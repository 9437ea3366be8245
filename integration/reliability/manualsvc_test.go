package reliability

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// manualService creates a Service without selector with one port (named
// "p") and an EndpointSlice managed by the test listing ips as ready
// endpoints on target: backends a test runs itself (in bed client
// namespaces) instead of echo pods. It returns the ClusterIP.
func (w *world) manualService(name string, proto corev1.Protocol, port, target int32, ips ...string) string {
	w.t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: "p", Protocol: proto, Port: port, TargetPort: intstr.FromInt32(target),
		}}},
	}
	created, err := w.b.Client.CoreV1().Services(w.ns).Create(w.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	ready, portName := true, "p"
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-manual", Labels: map[string]string{
			discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "uproxy-reliability-test",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Protocol: &proto, Port: &target}},
	}
	for _, ip := range ips {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		})
	}
	if _, err := w.b.Client.DiscoveryV1().EndpointSlices(w.ns).Create(w.ctx, slice, metav1.CreateOptions{}); err != nil {
		w.t.Fatal(err)
	}
	return created.Spec.ClusterIP
}
