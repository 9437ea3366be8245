package proxy

import (
	"strings"
	"testing"
)

func TestParsePortRange(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    PortRange
		wantErr string
	}{
		"empty is kernel-chosen": {in: "", want: PortRange{}},
		"0-0 is kernel-chosen":   {in: "0-0", want: PortRange{}},
		"range":                  {in: "30000-30009", want: PortRange{Base: 30000, Size: 10}},
		"single-port range":      {in: "8080-8080", want: PortRange{Base: 8080, Size: 1}},
		"plus form":              {in: "30000+9", want: PortRange{Base: 30000, Size: 10}},
		"plus zero":              {in: "30000+0", want: PortRange{Base: 30000, Size: 1}},
		"single port":            {in: "8080", want: PortRange{Base: 8080, Size: 1}},
		"spaces trimmed":         {in: " 100-200 ", want: PortRange{Base: 100, Size: 101}},
		"whole range":            {in: "1-65535", want: PortRange{Base: 1, Size: 65535}},
		"reversed":               {in: "200-100", wantErr: "below first port"},
		"too high":               {in: "65000-70000", wantErr: "outside 1-65535"},
		"plus overflow":          {in: "65000+1000", wantErr: "above 65535"},
		"negative offset":        {in: "100+-1", wantErr: "non-negative"},
		"not a number":           {in: "abc", wantErr: "not a number"},
		"half a range":           {in: "100-", wantErr: "not a number"},
		"port zero in a range":   {in: "0-100", wantErr: "outside 1-65535"},
		"single port zero":       {in: "0", wantErr: "outside 1-65535"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParsePortRange(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParsePortRange(%q) = %v, %v; want error with %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParsePortRange(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
			if again, err := ParsePortRange(got.String()); err != nil || again != got {
				t.Fatalf("round trip of %q via %q: %+v %v", tc.in, got.String(), again, err)
			}
		})
	}
}

func FuzzParsePortRange(f *testing.F) {
	for _, s := range []string{"", "0-0", "1-2", "30000+10", "8080", "-", "+", "65535-65535", "1-99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParsePortRange(s)
		if err != nil {
			return
		}
		if r.Empty() {
			return
		}
		if r.Base < 1 || r.Size < 1 || r.Base+r.Size-1 > 65535 {
			t.Fatalf("ParsePortRange(%q) = %+v: outside 1-65535", s, r)
		}
	})
}
