// Command thingspace-sim serves the ThingSpace simulator (internal/simulator)
// on LISTEN_ADDR (default 127.0.0.1:8090) for the dev stack and benchmarks.
// It accepts exactly the credentials named by the dispatcher's variables
// THINGSPACE_CLIENT_ID, THINGSPACE_CLIENT_SECRET, THINGSPACE_USERNAME and
// THINGSPACE_PASSWORD (demo values when unset), so one environment serves
// both. Every other knob is a flag and a SIM_* variable: see --help.
//
// main only calls run; nothing imports this package.
package main
