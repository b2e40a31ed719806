package heartbeat

import (
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestLatestTakesTheNewerHeartbeat(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: t0.Add(d)} }
	for _, c := range []struct {
		name    string
		status  *metav1.Time
		renewed time.Time
		want    *metav1.Time
	}{
		{"no heartbeat at all", nil, time.Time{}, nil},
		{"only a report", at(0), time.Time{}, at(0)},
		{"only a Lease", nil, t0, at(0)},
		{"the Lease is newer", at(0), t0.Add(40 * time.Second), at(40 * time.Second)},
		{"the report is newer", at(time.Minute), t0.Add(40 * time.Second), at(time.Minute)},
	} {
		got := Latest(c.status, c.renewed)
		if (got == nil) != (c.want == nil) || (got != nil && !got.Equal(c.want)) {
			t.Errorf("%s: Latest = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestRenewTimeOfANeverRenewedLease(t *testing.T) {
	if got := RenewTime(&coordinationv1.Lease{}); !got.IsZero() {
		t.Errorf("RenewTime of a Lease without renewTime = %v, want zero", got)
	}
	now := metav1.NewMicroTime(time.Now())
	if got := RenewTime(&coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{RenewTime: &now}}); !got.Equal(now.Time) {
		t.Errorf("RenewTime = %v, want %v", got, now)
	}
}
