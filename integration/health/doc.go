// Package health holds the scenario matrix of issue 7 (health-based removal)
// as tests on the integration bed (integration/bed): a deployment goes from 3
// replicas to 1 gracefully, by crash, by blackhole, by rolling update; one
// goes from 1 to 3; one endpoint resets every connection while staying Ready.
// Four curl loops (a new connection per request) measure each scenario from
// a client namespace; the tests print a table and assert the goals.
//
// TestHealthMatrix runs the matrix against uproxy as shipped and asserts the
// goals. TestHealthMatrixLegacy (opt-in: UPROXY_HEALTH_LEGACY=1) runs the same
// matrix with --disable-ejection, prints its table and asserts that the
// scenarios ejection is for miss a goal, so the effect of ejection is
// measured rather than assumed. A control loop straight to a pod measures
// the machine itself; the timing goals count the proxy's time, not the
// box's stalls (see machine in noise_test.go).
//
// The package has no non-test code; it owns no bed code (integration/bed does).
package health
