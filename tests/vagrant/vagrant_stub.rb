# A stand-in for Vagrant's configuration API, for tests/vagrant.rs: loads a Vagrantfile without
# Vagrant or a provider and prints what it defines (machines, NICs, sizes per provider,
# provisioners, synced folders) as JSON, so that the test can hold it against the appliance
# profile, the provisioning and the demo. Usage: ruby vagrant_stub.rb VAGRANTFILE
require "json"
class Recorder
  def initialize; @settings = {}; end
  attr_reader :settings
  def method_missing(name, *args, &blk)
    key = name.to_s
    if key.end_with?("=") then @settings[key.chomp("=")] = args.first
    else @settings[key] = args end
    nil
  end
  def respond_to_missing?(*) = true
end
class VmConfig
  attr_accessor :box, :hostname
  attr_reader :networks, :provisions, :providers, :synced, :defines
  def initialize; @networks = []; @provisions = []; @providers = {}; @synced = []; @defines = {}; end
  def network(type, **opts) = @networks << opts.merge(type: type)
  def provision(type, **opts) = @provisions << opts.merge(type: type)
  def synced_folder(src, dst, **opts) = @synced << opts.merge(src: src, dst: dst)
  def provider(name)
    r = (@providers[name] ||= Recorder.new)
    yield r, nil
  end
  def define(name, **opts)
    m = Machine.new
    yield m
    @defines[name] = { opts: opts, vm: m.vm }
  end
end
class Machine
  attr_reader :vm
  def initialize; @vm = VmConfig.new; end
end
module Vagrant
  def self.configure(version)
    raise "version #{version}" unless version == "2"
    $top = Machine.new
    yield $top
  end
end
load ARGV[0]
out = { box: $top.vm.box, synced: $top.vm.synced, machines: {} }
$top.vm.defines.each do |name, d|
  vm = d[:vm]
  out[:machines][name] = {
    primary: d[:opts][:primary] || false, hostname: vm.hostname, networks: vm.networks,
    provisions: vm.provisions, providers: vm.providers.transform_values(&:settings),
  }
end
puts JSON.pretty_generate(out)
