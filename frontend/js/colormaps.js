// colormaps.js — matplotlib colormaps as 17 even stops each, for drawing colour bars.
// Generated from matplotlib (the server's colours come from the same tables, render/colormap.py).

export const COLORMAPS = Object.freeze({
  gray: ['000000','101010','202020','303030','404040','505050','606060','707070','808080','909090','a0a0a0','b0b0b0','c0c0c0','d0d0d0','e0e0e0','f0f0f0','ffffff'],
  viridis: ['440154','48186a','472d7b','424086','3b528b','33638d','2c728e','26828e','21918c','1fa088','28ae80','3fbc73','5ec962','84d44b','addc30','d8e219','fde725'],
  magma: ['000004','0a0822','1d1147','36106b','51127c','6a1c81','832681','9c2e7f','b73779','d0416f','e75263','f56b5c','fc8961','fea772','fec488','fde2a3','fcfdbf'],
  inferno: ['000004','0b0724','210c4a','3d0965','57106e','71196e','8a226a','a32c61','bc3754','d24644','e45a31','f1731d','f98e09','fcac11','f9cb35','f2ea69','fcffa4'],
  plasma: ['0d0887','310597','4c02a1','6600a7','7e03a8','9511a1','aa2395','bc3587','cc4778','da5a6a','e66c5c','f0804e','f89540','fdac33','fdc527','f8df25','f0f921'],
  cividis: ['00224e','002e6a','1a386f','32436d','434e6c','535a6d','61656f','6f7073','7d7c78','8c8878','9b9476','aba072','bcae6c','cdbb63','dec958','f0d846','fee838'],
  coolwarm: ['3b4cc0','4e68d8','6282ea','779af7','8db0fe','a3c2fe','b9d0f9','ccd9ed','dddcdc','ecd3c5','f5c4ac','f7b093','f4987a','eb7d62','dd5f4b','ca3b37','b40426'],
  jet: ['000080','0000c8','0000ff','0040ff','0080ff','00c0ff','16ffe1','49ffad','7dff7a','b1ff46','e4ff13','ffd000','ff9400','ff5900','ff1e00','c40000','800000'],
  hot: ['0b0000','350000','5f0000','890000','b30000','dd0000','ff0800','ff3200','ff5c00','ff8600','ffb000','ffda00','ffff07','ffff46','ffff85','ffffc4','ffffff'],
  RdBu_r: ['053061','175290','2a71b2','3f8ec0','6bacd1','9bc9e0','c2ddec','e0ecf3','f7f6f6','fbe5d8','fbccb4','f5aa89','e48066','d05548','ba2832','930e26','67001f'],
  bwr: ['0000ff','2020ff','4040ff','6060ff','8080ff','a0a0ff','c0c0ff','e0e0ff','fffefe','ffdede','ffbebe','ff9e9e','ff7e7e','ff5e5e','ff3e3e','ff1e1e','ff0000'],
  seismic: ['00004c','000079','0000a6','0000d3','0101ff','4141ff','8181ff','c1c1ff','fffdfd','ffbdbd','ff7d7d','ff3d3d','fe0000','de0000','be0000','9e0000','800000'],
  turbo: ['30123b','4040a2','466be3','4294ff','28bceb','18ddc2','32f298','6dfe62','a4fc3c','cdec34','eecf3a','fdac34','fb7e21','eb500e','d02f05','a91601','7a0403'],
});

/** RGB of colormap `name` at t in [0, 1] (linear between stops); unknown names draw grey. */
export function colourAt(name, t) {
  const stops = COLORMAPS[name] ?? COLORMAPS.gray;
  const x = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const a = stops[i];
  const b = stops[i + 1];
  return [0, 2, 4].map((k) => Math.round(parseInt(a.slice(k, k + 2), 16) * (1 - f) + parseInt(b.slice(k, k + 2), 16) * f));
}
