// Preloaded with `node --require` (with loopback.cjs) so a server started
// with PORT=0 tells the tests which port the kernel gave it: once it listens,
// one line `LISTENING http://HOST:PORT` on stdout. The server binds the port
// itself, so no other process can take it in between.
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  this.once("listening", () => {
    const address = this.address();
    if (address && typeof address === "object") {
      const host = address.family === "IPv6" ? `[${address.address}]` : address.address;
      process.stdout.write(`LISTENING http://${host}:${address.port}\n`);
    }
  });
  return listen.apply(this, args);
};
